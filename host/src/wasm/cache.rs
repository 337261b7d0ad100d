//! Compiled components on disk. Cranelift takes seconds for a large component (a Python
//! guest is ~18 MB); loading the compiled artifact takes milliseconds.
//!
//! An entry is named by the SHA-256 of the `.wasm` bytes and the engine's compatibility
//! hash (wasmtime version and settings), so a changed guest or a new wasmtime never
//! loads a stale artifact. Entries are written to a temporary file and renamed, so a
//! crash never leaves a half-written entry under a valid name. A broken cache only
//! costs a recompilation, never a failure.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of compiled components.
#[derive(Clone, Debug)]
pub struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    /// A cache in `dir`, created when first written.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The default location: `$WEIR_CACHE_DIR`, else `$XDG_CACHE_HOME/weir/components`,
    /// else `~/.cache/weir/components`.
    pub fn default_location() -> Option<Self> {
        let dir = std::env::var_os("WEIR_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("weir/components"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/weir/components"))
            })?;
        Some(Self::new(dir))
    }

    fn entry(&self, engine: &Engine, wasm: &[u8]) -> PathBuf {
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        engine
            .precompile_compatibility_hash()
            .hash(&mut engine_hash);
        let mut digest = Sha256::new();
        digest.update(wasm);
        digest.update(engine_hash.finish().to_le_bytes());
        let name: String = digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.dir.join(format!("{name}.cwasm"))
    }

    /// The compiled form of `wasm`, if the cache holds a valid one.
    pub fn load(&self, engine: &Engine, wasm: &[u8]) -> Option<Component> {
        let path = self.entry(engine, wasm);
        if !path.exists() {
            return None;
        }
        // SAFETY: the entry was written by `store` below from `Component::serialize` of
        // the same engine configuration (the name includes the engine's compatibility
        // hash); wasmtime checks the header and rejects a foreign or truncated artifact.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring a broken compile-cache entry: {e:#}");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores the compiled form of `wasm`. Failing to cache is logged, not fatal.
    pub fn store(&self, engine: &Engine, wasm: &[u8], component: &Component) {
        let path = self.entry(engine, wasm);
        if let Err(e) = self.write(&path, component) {
            tracing::warn!(dir = %self.dir.display(), "could not cache the compiled component: {e:#}");
        }
    }

    fn write(&self, path: &Path, component: &Component) -> std::io::Result<()> {
        let bytes = component
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        std::fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile_in(&self.dir)?;
        tmp.1.write_all(&bytes)?;
        tmp.1.sync_all()?;
        std::fs::rename(&tmp.0, path)?;
        Ok(())
    }
}

/// A uniquely named temporary file in `dir`.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = format!(
        ".tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    );
    let path = dir.join(name.replace(['(', ')'], ""));
    let file = std::fs::File::create(&path)?;
    Ok((path, file))
}
