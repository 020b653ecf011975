//! Modules: content-addressed bytes and the names that point at them.

use async_trait::async_trait;
use rusqlite::params;

use super::{SqliteStore, rows, scalar};
use crate::store::lifecycle::json;
use crate::store::model::{ModuleRecord, NewModule};
use crate::store::rows::ModuleRow;
use crate::store::{ModuleStore, Result, StoreError};

#[async_trait]
impl ModuleStore for SqliteStore {
    async fn put_module(&self, m: NewModule, now: i64) -> Result<(ModuleRecord, bool)> {
        let inserted = self
            .write(|tx| {
                let inserted = tx
                    .prepare_cached(include_str!("modules/insert.sql"))?
                    .execute(params![
                        m.digest,
                        m.bytes.len() as i64,
                        m.world,
                        json(&m.imports),
                        m.bytes,
                        now
                    ])?
                    == 1;
                if let Some(name) = &m.name {
                    let set = tx
                        .prepare_cached(include_str!("modules/set_name.sql"))?
                        .execute(params![name, m.digest, m.owner, now, m.may_move])?;
                    if set == 0 {
                        let current: Option<String> =
                            scalar(tx, include_str!("modules/name_digest.sql"), [name])?;
                        if current.as_deref() != Some(m.digest.as_str()) {
                            return Err(StoreError::name_taken(name));
                        }
                    }
                }
                Ok(inserted)
            })
            .await?;
        let record = self.get_module(&m.digest).await?.ok_or_else(|| {
            StoreError::Corrupt(format!("module {} vanished after insert", m.digest))
        })?;
        Ok((record, inserted))
    }

    async fn get_module(&self, key: &str) -> Result<Option<ModuleRecord>> {
        let row: Option<ModuleRow> =
            self.read(|tx| Ok(rows(tx, include_str!("modules/get.sql"), [key])?.pop()))?;
        row.map(ModuleRow::into_record).transpose()
    }

    async fn module_bytes(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        self.read(|tx| scalar(tx, include_str!("modules/bytes.sql"), [digest]))
    }

    async fn list_modules(&self) -> Result<Vec<ModuleRecord>> {
        let rows: Vec<ModuleRow> =
            self.read(|tx| rows(tx, include_str!("modules/list.sql"), []))?;
        rows.into_iter().map(ModuleRow::into_record).collect()
    }
}
