//! `wasmjobs token create | list | revoke`: the API tokens of `wasmjobs.toml`, kept there by the
//! SHA-256 of their secret. The file is edited in place, its comments and layout kept; the
//! server reads its tokens when it starts.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::http::{Scope, Token};

#[derive(Debug, Args)]
pub struct TokenCmd {
    /// The configuration file to read and change (default: ./wasmjobs.toml).
    #[arg(long, env = "WASMJOBS_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    out: super::client::OutputArgs,
    #[command(subcommand)]
    verb: TokenVerb,
}

#[derive(Debug, Subcommand)]
enum TokenVerb {
    /// Make a token: prints its secret once (on stdout) and adds its hash to the configuration.
    Create {
        /// The token's name: 1 to 64 of A-Z a-z 0-9 _ . - (it owns the module names it sets).
        name: String,
        /// What the token may do: read (GET only), submit (also upload, submit, cancel, retry,
        /// workflows), admin (also schedules, others' module names, grant values).
        #[arg(long, value_parser = parse_scope)]
        scope: Scope,
        /// Print the TOML entry to add instead of changing the file.
        #[arg(long)]
        print: bool,
    },
    /// The configuration's tokens: name, scope and the start of the hash.
    List,
    /// Remove a token from the configuration (the server stops taking it when it restarts).
    Revoke {
        /// The token's name.
        name: String,
    },
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    match text {
        "read" => Ok(Scope::Read),
        "submit" => Ok(Scope::Submit),
        "admin" => Ok(Scope::Admin),
        _ => Err(format!(
            "invalid scope {text:?}: expected read, submit or admin"
        )),
    }
}

pub fn token(cmd: TokenCmd) -> anyhow::Result<u8> {
    let json = cmd.out.json();
    let path = cmd
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("wasmjobs.toml"));
    match cmd.verb {
        TokenVerb::Create { name, scope, print } => {
            let secret = new_secret()?;
            let token = Token::from_secret(&name, &secret, scope);
            token
                .validate()
                .map_err(|e| anyhow::anyhow!("invalid token: {e}"))?;
            if print {
                eprintln!("add this to the [[tokens]] of the server's wasmjobs.toml:");
                eprintln!(
                    "\n[[tokens]]\nname = {:?}\nsha256 = {:?}\nscope = {:?}\n",
                    token.name,
                    token.sha256,
                    scope.as_str()
                );
            } else {
                let mut doc = read(&path)?;
                if entries(&doc).iter().any(|t| t.name == name) {
                    bail!(
                        "{} already has a token named {name:?}: revoke it first, or choose another name",
                        path.display()
                    );
                }
                let tokens = doc
                    .entry("tokens")
                    .or_insert(toml_edit::Item::ArrayOfTables(Default::default()))
                    .as_array_of_tables_mut()
                    .with_context(|| {
                        format!("{}: `tokens` is not a list of [[tokens]]", path.display())
                    })?;
                let mut entry = toml_edit::Table::new();
                entry["name"] = toml_edit::value(&token.name);
                entry["sha256"] = toml_edit::value(&token.sha256);
                entry["scope"] = toml_edit::value(scope.as_str());
                tokens.push(entry);
                write(&path, &doc)?;
                eprintln!(
                    "added token {name:?} ({scope}) to {}; the server takes it when it (re)starts. The secret, shown once:",
                    path.display()
                );
            }
            if json {
                println!(
                    "{}",
                    json!({ "name": name, "scope": scope, "secret": secret })
                );
            } else {
                println!("{secret}");
            }
            Ok(crate::exit::OK)
        }
        TokenVerb::List => {
            let doc = read(&path)?;
            let tokens = entries(&doc);
            if json {
                let list: Vec<_> = tokens
                    .iter()
                    .map(|t| json!({ "name": t.name, "scope": t.scope, "sha256": t.sha256 }))
                    .collect();
                println!("{}", json!({ "tokens": list }));
            } else if tokens.is_empty() {
                eprintln!("no tokens in {}", path.display());
            } else {
                let rows = tokens.iter().map(|t| {
                    [
                        t.name.clone(),
                        t.scope.to_string(),
                        format!("{}…", t.sha256.get(..12).unwrap_or(&t.sha256)),
                    ]
                });
                print!(
                    "{}",
                    super::output::table(["NAME", "SCOPE", "SHA256"], rows)
                );
            }
            Ok(crate::exit::OK)
        }
        TokenVerb::Revoke { name } => {
            let mut doc = read(&path)?;
            let tokens = doc
                .get_mut("tokens")
                .and_then(toml_edit::Item::as_array_of_tables_mut);
            let Some(tokens) = tokens else {
                bail!("{} has no token named {name:?}", path.display());
            };
            let before = tokens.len();
            tokens.retain(|t| t.get("name").and_then(toml_edit::Item::as_str) != Some(&name));
            if tokens.len() == before {
                bail!("{} has no token named {name:?}", path.display());
            }
            write(&path, &doc)?;
            eprintln!(
                "revoked token {name:?} in {}; the server stops taking it when it restarts",
                path.display()
            );
            Ok(crate::exit::OK)
        }
    }
}

/// A new secret: 32 bytes from the operating system's generator, as hex after a `wj_` prefix
/// (which lets secret scanners recognise it).
fn new_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot draw random bytes for the secret: {e}"))?;
    Ok(format!("wj_{}", hex::encode(bytes)))
}

/// The configuration as a document (empty when the file does not exist yet), checked to be a
/// configuration the server would take.
fn read(path: &Path) -> anyhow::Result<toml_edit::DocumentMut> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    toml::from_str::<crate::config::FileConfig>(&text)
        .with_context(|| format!("invalid config file {}", path.display()))?;
    text.parse()
        .with_context(|| format!("invalid config file {}", path.display()))
}

/// The tokens of a document the server would take (see [`read`]).
fn entries(doc: &toml_edit::DocumentMut) -> Vec<Token> {
    toml::from_str::<crate::config::FileConfig>(&doc.to_string())
        .map(|c| c.tokens)
        .unwrap_or_default()
}

/// Writes the document beside the file and renames it over it: the file is never half
/// written. A new file is readable by its owner only (it holds hashes of secrets).
fn write(path: &Path, doc: &toml_edit::DocumentMut) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write beside {}", path.display()))?;
    std::io::Write::write_all(&mut tmp, doc.to_string().as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(tmp.path(), meta.permissions());
    }
    tmp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}
