//! WebAssembly: the wasmtime engine, loading and checking components, the host side of
//! the WIT contract, and the adapter that makes a guest instance a runtime
//! [`Operator`](crate::runtime::Operator).
//!
//! One [`Engine`] per process, one compiled [`Component`] per `.wasm` file (cached on
//! disk, so a second start skips Cranelift), one store and instance per subtask. This
//! part owns everything that touches wasmtime; the rest of the host sees only
//! [`WasmRuntime`], [`OperatorComponent`] and [`WasmOperator`].
//!
//! # Layout
//! - `bindings`: the one `bindgen!` site.
//! - `host`: the host implementations of the imports (`state`, `output`, `timers`, `log`).
//! - `cache`: compiled components on disk.
//! - `stdio`: the guest's stdout and stderr, into the log.
//! - `operator`: [`WasmOperator`], one guest instance driven by a subtask.

mod bindings;
mod cache;
mod host;
mod operator;
mod stdio;

pub use cache::CompileCache;
pub use operator::WasmOperator;

use crate::runtime::TaskInfo;
use crate::state::KeyedStateBackend;
use bindings::{HANDLER_EXPORT, OperatorPre};
use host::GuestState;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// The file could not be read.
    #[error("cannot read the component {}: {source}", path.display())]
    Read {
        /// The component's path.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not WebAssembly, or a core module instead of a component.
    #[error("{} is not a WebAssembly component: {reason}", path.display())]
    NotAComponent {
        /// The component's path.
        path: PathBuf,
        /// What it is instead, and how to fix it.
        reason: String,
    },
    /// wasmtime rejected the component.
    #[error("{} could not be compiled: {message}", path.display())]
    Compile {
        /// The component's path.
        path: PathBuf,
        /// wasmtime's explanation.
        message: String,
    },
    /// The component does not implement the `weir:operator/operator` world.
    #[error(
        "{} does not implement the weir:operator/operator world: {problem}. Build it against the WIT in wit/ (world \"operator\"), e.g. with the weir-sdk crate and `cargo build --target wasm32-wasip2`.",
        path.display()
    )]
    NotAnOperator {
        /// The component's path.
        path: PathBuf,
        /// What is missing.
        problem: String,
    },
    /// The engine could not be set up.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// The process-wide engine and linker, and the compile cache.
pub struct WasmRuntime {
    engine: Engine,
    linker: Arc<Linker<GuestState>>,
    cache: Option<CompileCache>,
}

/// A loaded, checked operator component, ready to be instantiated per subtask.
#[derive(Clone)]
pub struct OperatorComponent {
    path: PathBuf,
    pre: OperatorPre<GuestState>,
    engine: Engine,
}

impl WasmRuntime {
    /// An engine with Weir's settings; compiled components are cached in `cache`.
    pub fn new(cache: Option<CompileCache>) -> Result<Self, WasmError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config).map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        bindings::Operator::add_to_linker::<GuestState, HasSelf<GuestState>>(&mut linker, |s| s)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            cache,
        })
    }

    /// Loads the component at `path` (from the compile cache when it holds it) and
    /// checks that it implements the operator world.
    pub fn load(&self, path: &Path) -> Result<OperatorComponent, WasmError> {
        let bytes = std::fs::read(path).map_err(|source| WasmError::Read {
            path: path.to_owned(),
            source,
        })?;
        check_header(path, &bytes)?;
        let started = Instant::now();
        let cached = self
            .cache
            .as_ref()
            .and_then(|c| c.load(&self.engine, &bytes));
        let component = match cached {
            Some(component) => {
                tracing::debug!(path = %path.display(), elapsed = ?started.elapsed(), "loaded compiled component from the cache");
                component
            }
            None => {
                tracing::info!(path = %path.display(), "compiling component (done once; the result is cached)");
                let component =
                    Component::new(&self.engine, &bytes).map_err(|e| WasmError::Compile {
                        path: path.to_owned(),
                        message: format!("{e:#}"),
                    })?;
                tracing::info!(path = %path.display(), elapsed = ?started.elapsed(), "compiled component");
                if let Some(cache) = &self.cache {
                    cache.store(&self.engine, &bytes, &component);
                }
                component
            }
        };
        self.check_world(path, &component)?;
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            WasmError::NotAnOperator {
                path: path.to_owned(),
                problem: format!(
                    "{e:#} (Weir provides weir:operator/{{state,output,timers,log}} and WASI 0.2)"
                ),
            }
        })?;
        let pre = OperatorPre::new(instance_pre).map_err(|e| WasmError::NotAnOperator {
            path: path.to_owned(),
            problem: format!("{e:#}"),
        })?;
        Ok(OperatorComponent {
            path: path.to_owned(),
            pre,
            engine: self.engine.clone(),
        })
    }

    fn check_world(&self, path: &Path, component: &Component) -> Result<(), WasmError> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        if exports.iter().any(|e| e == HANDLER_EXPORT) {
            return Ok(());
        }
        let found = if exports.is_empty() {
            "it exports nothing".to_owned()
        } else {
            format!("it exports only {}", exports.join(", "))
        };
        Err(WasmError::NotAnOperator {
            path: path.to_owned(),
            problem: format!("the export `{HANDLER_EXPORT}` is missing ({found})"),
        })
    }
}

fn check_header(path: &Path, bytes: &[u8]) -> Result<(), WasmError> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_VERSION: &[u8] = &[1, 0, 0, 0];
    let reason = if bytes.len() < 8 || &bytes[..4] != MAGIC {
        "the file does not start with the WebAssembly magic bytes"
    } else if &bytes[4..8] == CORE_VERSION {
        "it is a core WebAssembly module; build for the wasm32-wasip2 target (or run `wasm-tools component new`) to get a component"
    } else {
        return Ok(());
    };
    Err(WasmError::NotAComponent {
        path: path.to_owned(),
        reason: reason.to_owned(),
    })
}

impl OperatorComponent {
    /// The component's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Instantiates the component for one subtask, with its keyed state in `backend`.
    pub fn instantiate(
        &self,
        info: &TaskInfo,
        config: &str,
        backend: Box<dyn KeyedStateBackend>,
    ) -> Result<WasmOperator, crate::runtime::TaskError> {
        WasmOperator::new(self, info, config, backend)
    }
}
