//! Modules: content-addressed bytes and the names that point at them.

use async_trait::async_trait;

use super::PgStore;
use crate::store::lifecycle::json;
use crate::store::model::{ModuleRecord, NewModule};
use crate::store::rows::ModuleRow;
use crate::store::{ModuleStore, Result, StoreError};

#[async_trait]
impl ModuleStore for PgStore {
    async fn put_module(&self, m: NewModule, now: i64) -> Result<(ModuleRecord, bool)> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(include_str!("modules/insert.sql"))
            .bind(&m.digest)
            .bind(m.bytes.len() as i64)
            .bind(&m.world)
            .bind(json(&m.imports))
            .bind(&m.bytes)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if let Some(name) = &m.name {
            let set = sqlx::query(include_str!("modules/set_name.sql"))
                .bind(name)
                .bind(&m.digest)
                .bind(&m.owner)
                .bind(now)
                .bind(m.may_move)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if set == 0 {
                let current: Option<String> =
                    sqlx::query_scalar(include_str!("modules/name_digest.sql"))
                        .bind(name)
                        .fetch_optional(&mut *tx)
                        .await?;
                if current.as_deref() != Some(m.digest.as_str()) {
                    return Err(StoreError::name_taken(name));
                }
            }
        }
        tx.commit().await?;
        let record = self.get_module(&m.digest).await?.ok_or_else(|| {
            StoreError::Corrupt(format!("module {} vanished after insert", m.digest))
        })?;
        Ok((record, inserted))
    }

    async fn get_module(&self, key: &str) -> Result<Option<ModuleRecord>> {
        let row: Option<ModuleRow> = sqlx::query_as(include_str!("modules/get.sql"))
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(ModuleRow::into_record).transpose()
    }

    async fn module_bytes(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar(include_str!("modules/bytes.sql"))
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn list_modules(&self) -> Result<Vec<ModuleRecord>> {
        let rows: Vec<ModuleRow> = sqlx::query_as(include_str!("modules/list.sql"))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(ModuleRow::into_record).collect()
    }
}
