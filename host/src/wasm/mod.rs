//! WebAssembly: the wasmtime engine, loading and checking components, the host side of
//! the WIT contract, and the adapter that makes a guest instance a runtime
//! [`Operator`](crate::runtime::Operator).
//!
//! One [`Engine`] per kind of [`Metering`] (in practice one: fuel and epochs, unless an
//! operator turns fuel off), one compiled [`Component`] per `.wasm` file (cached on
//! disk, so a second start skips Cranelift), one store and instance per subtask. This
//! part owns everything that touches wasmtime; the rest of the host sees only
//! [`WasmRuntime`], [`OperatorComponent`] and [`WasmOperator`].
//!
//! # Layout
//! - `bindings`: the one `bindgen!` site.
//! - `host`: the host implementations of the imports (`state`, `output`, `timers`, `log`).
//! - `sandbox`: metering (fuel, epoch deadlines, memory and output caps), the capped
//!   clock for host-side waits, the WASI capabilities a guest is granted.
//! - `dead_letter`: the restore point, replay log and dead-letter file of
//!   `on-runaway = "dead-letter"`.
//! - `cache`: compiled components on disk.
//! - `stdio`: the guest's stdout and stderr, into the log.
//! - `operator`: [`WasmOperator`], one guest instance driven by a subtask.
//! - `profile`: [`Profiler`], the guest's stack sampled on epoch ticks: flame graphs
//!   ([`FlameGraph`], Flink's JSON) and stack dumps ([`SubtaskStack`]); it also counts
//!   the ticks that the epoch deadlines go by.

mod bindings;
mod cache;
mod dead_letter;
mod host;
mod operator;
mod profile;
mod sandbox;
mod stdio;

pub use cache::CompileCache;
pub use operator::{GuestSettings, WasmOperator};
pub use profile::{FlameGraph, FlameNode, GuestStack, ProfileError, Profiler, SubtaskStack};
pub use sandbox::{EPOCH_TICK, Metering};

use crate::runtime::TaskInfo;
use crate::state::KeyedStateBackend;
use bindings::{HANDLER_EXPORT, OperatorPre};
use host::GuestState;
use profile::Epochs;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    /// The component implements another version of the contract.
    #[error(
        "{} was built against {found}, but this host implements weir:operator@{version}, where batches cross as flat buffers. Rebuild it against the WIT in wit/ of this release: for Rust, with this release's weir-sdk and `cargo build --target wasm32-wasip2 --release`; for Python or JavaScript, with its build script (see the README).",
        path.display(),
        version = bindings::CONTRACT_VERSION
    )]
    WrongVersion {
        /// The component's path.
        path: PathBuf,
        /// The contract it exports, as `weir:operator@0.1.0`.
        found: String,
    },
    /// The engine could not be set up.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// The engines (one per kind of metering, made when first needed), their linkers,
/// and the compile cache.
pub struct WasmRuntime {
    engines: Mutex<Vec<Arc<Flavor>>>,
    cache: Option<CompileCache>,
}

/// The most frames a backtrace captures, a trap's or a sample's: wasmtime's default,
/// written down because a sample of this many frames has lost its outer ones, and the
/// profiler says so.
const BACKTRACE_FRAMES: usize = 20;

/// One engine with its linker.
struct Flavor {
    metering: Metering,
    engine: Engine,
    linker: Arc<Linker<GuestState>>,
    /// Weir's count of the engine's ticks, when it has epochs.
    epochs: Option<Arc<Epochs>>,
}

/// A loaded, checked operator component, ready to be instantiated per subtask.
#[derive(Clone)]
pub struct OperatorComponent {
    path: PathBuf,
    pre: OperatorPre<GuestState>,
    engine: Engine,
    metering: Metering,
    epochs: Option<Arc<Epochs>>,
}

impl Flavor {
    fn new(metering: Metering) -> Result<Self, WasmError> {
        let engine_error = |e: wasmtime::Error| WasmError::Engine(format!("{e:#}"));
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        config.consume_fuel(metering.fuel);
        config.epoch_interruption(metering.epoch);
        config.wasm_backtrace_max_frames(NonZeroUsize::new(BACKTRACE_FRAMES));
        let engine = Engine::new(&config).map_err(engine_error)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_error)?;
        sandbox::add_capped_clock(&mut linker).map_err(engine_error)?;
        bindings::Operator::add_to_linker::<GuestState, HasSelf<GuestState>>(&mut linker, |s| s)
            .map_err(engine_error)?;
        let epochs = if metering.epoch {
            let epochs = Arc::new(Epochs::new(&engine));
            start_ticker(&engine, epochs.clone())?;
            Some(epochs)
        } else {
            None
        };
        Ok(Self {
            metering,
            engine,
            linker: Arc::new(linker),
            epochs,
        })
    }
}

/// Starts the thread that advances `engine`'s epoch, and Weir's count of it in
/// `epochs`, every [`EPOCH_TICK`]. It holds the engine weakly and ends once the engine
/// (every component compiled by it) is dropped.
fn start_ticker(engine: &Engine, epochs: Arc<Epochs>) -> Result<(), WasmError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("weir-epoch".to_owned())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                epochs.tick(&engine);
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map(drop)
        .map_err(|e| WasmError::Engine(format!("cannot start the epoch ticker: {e}")))
}

impl WasmRuntime {
    /// The runtime with Weir's settings; compiled components are cached in `cache`.
    /// The fully metered engine (fuel and epochs, what the job file's defaults use) is
    /// made at once, so that a broken setup shows before a job is read.
    pub fn new(cache: Option<CompileCache>) -> Result<Self, WasmError> {
        let metered = Flavor::new(Metering::FULL)?;
        Ok(Self {
            engines: Mutex::new(vec![Arc::new(metered)]),
            cache,
        })
    }

    /// The engine for `metering`, made when first asked for.
    fn flavor(&self, metering: Metering) -> Result<Arc<Flavor>, WasmError> {
        let mut engines = self
            .engines
            .lock()
            .map_err(|_| WasmError::Engine("the engine list was poisoned".to_owned()))?;
        if let Some(flavor) = engines.iter().find(|f| f.metering == metering) {
            return Ok(flavor.clone());
        }
        let flavor = Arc::new(Flavor::new(metering)?);
        engines.push(flavor.clone());
        Ok(flavor)
    }

    /// Loads the component at `path` (from the compile cache when it holds it) and
    /// checks that it implements the operator world. `metering` picks the engine: what the operator's sandbox needs
    /// ([`Metering::of`]).
    pub fn load(&self, path: &Path, metering: Metering) -> Result<OperatorComponent, WasmError> {
        let flavor = self.flavor(metering)?;
        let bytes = std::fs::read(path).map_err(|source| WasmError::Read {
            path: path.to_owned(),
            source,
        })?;
        check_header(path, &bytes)?;
        let started = Instant::now();
        let cached = self
            .cache
            .as_ref()
            .and_then(|c| c.load(&flavor.engine, &bytes));
        let component = match cached {
            Some(component) => {
                tracing::debug!(path = %path.display(), elapsed = ?started.elapsed(), "loaded compiled component from the cache");
                component
            }
            None => {
                tracing::info!(path = %path.display(), "compiling component (done once; the result is cached)");
                let component =
                    Component::new(&flavor.engine, &bytes).map_err(|e| WasmError::Compile {
                        path: path.to_owned(),
                        message: format!("{e:#}"),
                    })?;
                tracing::info!(path = %path.display(), elapsed = ?started.elapsed(), "compiled component");
                if let Some(cache) = &self.cache {
                    cache.store(&flavor.engine, &bytes, &component);
                }
                component
            }
        };
        check_world(&flavor.engine, path, &component)?;
        let instance_pre = flavor.linker.instantiate_pre(&component).map_err(|e| {
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
            engine: flavor.engine.clone(),
            metering,
            epochs: flavor.epochs.clone(),
        })
    }
}

fn check_world(engine: &Engine, path: &Path, component: &Component) -> Result<(), WasmError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    if exports.iter().any(|e| e == HANDLER_EXPORT) {
        return Ok(());
    }
    if let Some(version) = exports
        .iter()
        .find_map(|e| e.strip_prefix("weir:operator/handler@"))
    {
        return Err(WasmError::WrongVersion {
            path: path.to_owned(),
            found: format!("weir:operator@{version}"),
        });
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

    /// The metering its engine compiled in.
    pub fn metering(&self) -> Metering {
        self.metering
    }

    /// Instantiates the component for one subtask, with its keyed state in `backend`.
    pub fn instantiate(
        &self,
        info: &TaskInfo,
        settings: &Arc<GuestSettings>,
        backend: Box<dyn KeyedStateBackend>,
    ) -> Result<WasmOperator, crate::runtime::TaskError> {
        WasmOperator::new(self, info, settings.clone(), backend)
    }
}
