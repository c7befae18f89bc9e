//! The engine's methods for the OpenAI-compatible facade's files and batches (the HTTP
//! side is `crate::api::v1`); each is one store read or write.

use super::Engine;
use crate::queue::messages::EngineError;
use crate::store::llm_files::{self, BatchRecord, FileInfo, FilePage, NewFile};

impl Engine {
    /// Stores an uploaded file.
    pub async fn insert_llm_file(&self, file: NewFile) -> Result<(), EngineError> {
        Ok(self
            .store
            .write(move |c| llm_files::insert_file(c, &file))
            .await?)
    }

    /// One page of uploaded files.
    pub async fn llm_files(&self, page: FilePage) -> Result<Vec<FileInfo>, EngineError> {
        Ok(self
            .store
            .read(move |c| llm_files::list_files(c, &page))
            .await?)
    }

    /// One uploaded file, without content.
    pub async fn llm_file(&self, id: &str) -> Result<Option<FileInfo>, EngineError> {
        let id = id.to_string();
        Ok(self
            .store
            .read(move |c| llm_files::get_file(c, &id))
            .await?)
    }

    /// One uploaded file's content.
    pub async fn llm_file_content(&self, id: &str) -> Result<Option<Vec<u8>>, EngineError> {
        let id = id.to_string();
        Ok(self
            .store
            .read(move |c| llm_files::file_content(c, &id))
            .await?)
    }

    /// Deletes an uploaded file; whether it existed.
    pub async fn delete_llm_file(&self, id: &str) -> Result<bool, EngineError> {
        let id = id.to_string();
        Ok(self
            .store
            .write(move |c| llm_files::delete_file(c, &id))
            .await?)
    }

    /// Stores a facade batch.
    pub async fn insert_llm_batch(&self, batch: BatchRecord) -> Result<(), EngineError> {
        Ok(self
            .store
            .write(move |c| llm_files::insert_batch(c, &batch))
            .await?)
    }

    /// One facade batch.
    pub async fn llm_batch(&self, id: &str) -> Result<Option<BatchRecord>, EngineError> {
        let id = id.to_string();
        Ok(self
            .store
            .read(move |c| llm_files::get_batch(c, &id))
            .await?)
    }

    /// A page of facade batches, newest first, after `after`.
    pub async fn llm_batches(
        &self,
        after: Option<String>,
        limit: i64,
    ) -> Result<Vec<BatchRecord>, EngineError> {
        Ok(self
            .store
            .read(move |c| llm_files::list_batches(c, after.as_deref(), limit))
            .await?)
    }

    /// The prompt and completion tokens a `batch_llm` job's finished requests used.
    pub async fn llm_token_totals(&self, job_id: &str) -> Result<(u64, u64), EngineError> {
        let id = job_id.to_string();
        Ok(self
            .store
            .read(move |c| llm_files::token_totals(c, &id))
            .await?)
    }

    /// [`Engine::llm_token_totals`] of several jobs in one read; jobs that used no
    /// tokens yet are absent.
    pub async fn llm_token_totals_of(
        &self,
        job_ids: Vec<String>,
    ) -> Result<std::collections::HashMap<String, (u64, u64)>, EngineError> {
        Ok(self
            .store
            .read(move |c| llm_files::token_totals_of(c, &job_ids))
            .await?)
    }
}
