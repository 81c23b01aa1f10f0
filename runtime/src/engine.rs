//! The runtime: one wasmtime engine, its linker, the module cache (in memory
//! and precompiled on disk) and the epoch ticker that enforces time limits.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::{Config, Engine, InstancePre, Linker, Module};

use crate::error::{Error, Result};
use crate::memory::TernMemoryCreator;
use crate::rewrite::{rewrite, ModuleInfo};
use crate::snapshot::{decode_record, encode_record};
use crate::wasi::HostState;

pub use crate::snapshot::sha256;

/// Bumped whenever the rewrite's output changes, so cached artifacts of an
/// older rewrite are not reused.
const REWRITE_VERSION: u32 = 1;

/// How often the engine's epoch advances; time limits have this resolution.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Guest stack bound (the host's own stack is never at risk).
pub const MAX_WASM_STACK: usize = 1 << 20;

/// How the runtime is set up.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// Where precompiled artifacts are kept; `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
}

impl RuntimeConfig {
    /// The default on-disk cache: `$TERN_CACHE_DIR`, else `$XDG_CACHE_HOME/tern`,
    /// else `~/.cache/tern`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("TERN_CACHE_DIR") {
            return Some(PathBuf::from(d));
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            return Some(PathBuf::from(d).join("tern"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("tern"))
    }
}

/// A module ready to instantiate: validated, rewritten, compiled, linked.
pub struct LoadedModule {
    /// sha256 of the original bytes.
    pub sha256: [u8; 32],
    /// The original bytes (what snapshots embed and nodes exchange).
    pub original: Arc<Vec<u8>>,
    pub info: ModuleInfo,
    pub module: Module,
    pub(crate) pre: InstancePre<HostState>,
}

impl LoadedModule {
    pub fn hash_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// The runtime. Cheap to share (`Arc`); one per process is enough.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    config: RuntimeConfig,
    engine_key: String,
    modules: Mutex<HashMap<[u8; 32], Arc<LoadedModule>>>,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Arc<Runtime>> {
        let mut c = Config::new();
        c.epoch_interruption(true)
            .consume_fuel(true)
            .max_wasm_stack(MAX_WASM_STACK)
            .memory_init_cow(false)
            .with_host_memory(Arc::new(TernMemoryCreator))
            .wasm_component_model(false);
        let engine = Engine::new(&c)
            .map_err(|e| Error::Other(format!("cannot create the Wasm engine: {e}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut HostState| &mut s.wasi)
            .map_err(|e| Error::Other(format!("cannot link WASI: {e}")))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        REWRITE_VERSION.hash(&mut h);
        let engine_key = format!("{:016x}", h.finish());
        start_epoch_ticker(&engine);
        Ok(Arc::new(Runtime {
            engine,
            linker,
            config,
            engine_key,
            modules: Mutex::new(HashMap::new()),
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Loads a module from a file.
    pub fn load_file(&self, path: &Path) -> Result<Arc<LoadedModule>> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::io(format!("cannot read module `{}`", path.display()), e))?;
        let looks_like_text = bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b'(' || b == b';');
        let bytes = if !bytes.starts_with(b"\0asm")
            && (path.extension().is_some_and(|e| e == "wat") || looks_like_text)
        {
            wat::parse_bytes(&bytes)
                .map_err(|e| {
                    Error::Module(crate::rewrite::RewriteError::Invalid(format!(
                        "`{}`: {e}",
                        path.display()
                    )))
                })?
                .into_owned()
        } else {
            bytes
        };
        self.load(bytes)
    }

    /// Loads a module: validates, rewrites and compiles it, or takes it from
    /// the cache (in memory, then the precompiled artifact on disk).
    pub fn load(&self, bytes: Vec<u8>) -> Result<Arc<LoadedModule>> {
        let hash = sha256(&bytes);
        if let Some(m) = self
            .modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
        {
            return Ok(m.clone());
        }
        let (module, info) = match self.load_artifact(&hash) {
            Some(found) => found,
            None => {
                let rewritten = rewrite(&bytes)?;
                let module = Module::new(&self.engine, &rewritten.bytes)
                    .map_err(|e| Error::Compile(format!("{e:#}")))?;
                self.store_artifact(&hash, &module, &rewritten.info);
                (module, rewritten.info)
            }
        };
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| Error::Link(format!("{e:#}")))?;
        let loaded = Arc::new(LoadedModule {
            sha256: hash,
            original: Arc::new(bytes),
            info,
            module,
            pre,
        });
        self.modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash, loaded.clone());
        Ok(loaded)
    }

    /// A module already loaded, by hash.
    pub fn loaded(&self, hash: &[u8; 32]) -> Option<Arc<LoadedModule>> {
        self.modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .cloned()
    }

    fn artifact_paths(&self, hash: &[u8; 32]) -> Option<(PathBuf, PathBuf)> {
        let dir = self.config.cache_dir.as_ref()?.join("artifacts");
        let stem = format!("{}-{}", hex::encode(hash), self.engine_key);
        Some((
            dir.join(format!("{stem}.cwasm")),
            dir.join(format!("{stem}.info")),
        ))
    }

    fn load_artifact(&self, hash: &[u8; 32]) -> Option<(Module, ModuleInfo)> {
        let (cwasm, info_path) = self.artifact_paths(hash)?;
        let info: ModuleInfo = decode_record(&std::fs::read(&info_path).ok()?).ok()?;
        // SAFETY: artifacts in the cache directory are written only by this
        // code (`store_artifact`), from modules it compiled itself, and are
        // keyed by the engine's compatibility hash.
        let module = unsafe { Module::deserialize_file(&self.engine, &cwasm) }.ok()?;
        Some((module, info))
    }

    fn store_artifact(&self, hash: &[u8; 32], module: &Module, info: &ModuleInfo) {
        let Some((cwasm, info_path)) = self.artifact_paths(hash) else {
            return;
        };
        let result = (|| -> std::io::Result<()> {
            tern_util::create_private_dir(cwasm.parent().unwrap())?;
            let bytes = module
                .serialize()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            tern_util::write_atomic(&cwasm, &bytes)?;
            tern_util::write_atomic(&info_path, &encode_record(info))
        })();
        if let Err(e) = result {
            tracing::warn!("cannot cache compiled module in {}: {e}", cwasm.display());
        }
    }
}

/// One thread per process advances the epoch of every engine it was given.
fn start_epoch_ticker(engine: &Engine) {
    static ENGINES: OnceLock<Mutex<Vec<wasmtime::EngineWeak>>> = OnceLock::new();
    let mut started = false;
    let list = ENGINES.get_or_init(|| {
        started = true;
        Mutex::new(Vec::new())
    });
    list.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(engine.weak());
    if started {
        std::thread::Builder::new()
            .name("tern-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                let mut engines = list.lock().unwrap_or_else(|e| e.into_inner());
                engines.retain(|w| match w.upgrade() {
                    Some(e) => {
                        e.increment_epoch();
                        true
                    }
                    None => false,
                });
            })
            .expect("cannot start the epoch thread");
    }
}
