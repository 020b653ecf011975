// `sqlx::migrate!` embeds the migrations when the crate compiles; without this, a new or
// changed migration file would not rebuild the crate (sqlx's advice for stable Rust).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
