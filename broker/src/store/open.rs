//! Opening a store: which engine, with which settings. It owns that choice and nothing else; the
//! configuration's `[storage]` table says it as an [`Engine`] (`config::StorageConfig::engine`).

use std::path::Path;
use std::sync::Arc;

use super::disk::{scrub, DiskOptions, DiskStore};
use super::{JetStreamOptions, JetStreamStore, MemoryStore, Store};
use crate::Result;

/// An engine to open, and its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Engine {
    /// A [`DiskStore`] in the data folder.
    Disk {
        /// How to open it.
        options: DiskOptions,
        /// Bytes per second its background scrub reads; 0: no scrub.
        scrub_bytes_per_sec: u64,
    },
    /// An empty [`MemoryStore`]: nothing survives the process.
    Memory,
    /// A [`JetStreamStore`] in the cluster the options name (`data_dir` holds nothing of it).
    JetStream(JetStreamOptions),
}

/// Opens `engine`: a [`DiskStore`] in `data_dir` (created if missing), with its background scrub if one
/// is asked for, an empty [`MemoryStore`], or a
/// [`JetStreamStore`] connected to its cluster (both ignore `data_dir`).
pub fn open(engine: Engine, data_dir: &Path) -> Result<Arc<dyn Store>> {
    Ok(match engine {
        Engine::Disk { options, scrub_bytes_per_sec } => {
            let store = Arc::new(DiskStore::open_with(data_dir, options)?);
            if scrub_bytes_per_sec > 0 {
                scrub::spawn(Arc::downgrade(&store), scrub_bytes_per_sec)?;
            }
            store
        }
        Engine::Memory => Arc::new(MemoryStore::new()),
        Engine::JetStream(options) => Arc::new(JetStreamStore::connect(options)?),
    })
}
