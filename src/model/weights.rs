//! Host side of weight loading: memory-maps a checkpoint, checks it against the model config
//! and hands out borrowed byte views for upload. Nothing here touches the GPU.
//!
//! A checkpoint directory holds either `model.safetensors` or shards listed by
//! `model.safetensors.index.json` (`weight_map`: tensor name → shard file). When both exist the
//! single file wins, as in transformers. Names are stored canonically in the hub layout;
//! transformers-v5 names (`model.language_model.*`, ...) are mapped back on open
//! ([`canonical_name`]).
//!
//! Errors come one at a time, first problem first, in a fixed order: files in name order while
//! opening, then the expected tensors in inventory order while validating.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::Metadata;

use super::names::{canonical_name, expected_tensors, unused_tensors, TensorSpec, EMBED_TOKENS, LM_HEAD};
use crate::config::ModelConfig;
use crate::runtime::DType;

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The safetensors format caps the JSON header at 100 MB; a larger length field means the
/// file is not a safetensors file (or its first 8 bytes are damaged).
const MAX_HEADER_BYTES: u64 = 100_000_000;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("model directory {} does not exist or is not a directory", dir.display())]
    DirMissing { dir: PathBuf },

    #[error("{}: no weights: neither {SINGLE_FILE} nor {INDEX_FILE} is present", dir.display())]
    NoWeightFiles { dir: PathBuf },

    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: malformed index: {reason}", path.display())]
    IndexMalformed { path: PathBuf, reason: String },

    #[error("{}: tensor `{tensor}` is mapped to shard {shard:?}, which does not exist", index.display())]
    ShardMissing {
        index: PathBuf,
        tensor: String,
        shard: String,
    },

    #[error("{}: tensor `{tensor}` is listed in the index but absent from its shard {}",
        index.display(), shard.display())]
    TensorNotInShard {
        index: PathBuf,
        tensor: String,
        shard: PathBuf,
    },

    #[error("{}: corrupt safetensors header: {reason}", file.display())]
    CorruptHeader { file: PathBuf, reason: String },

    #[error("{}: truncated: tensor `{tensor}` ends at byte {needed} but the file has {file_len} bytes",
        file.display())]
    Truncated {
        file: PathBuf,
        tensor: String,
        needed: u64,
        file_len: u64,
    },

    #[error("{}: tensor `{tensor}` has dtype {dtype}, which the engine cannot load (valid: BF16)",
        file.display())]
    UnsupportedDtype {
        file: PathBuf,
        tensor: String,
        dtype: String,
    },

    #[error("tensor `{name}` is stored twice, as `{first}` and as `{second}`")]
    DuplicateTensor {
        name: String,
        first: String,
        second: String,
    },

    #[error("{}: missing tensor `{name}`", dir.display())]
    MissingTensor { dir: PathBuf, name: String },

    /// A stored tensor that a strict inventory (ERNIE-4.5-VL) does not list.
    #[error("{}: tensor `{name}` is not in the {model} inventory (a different checkpoint layout or model size?)", dir.display())]
    UnexpectedTensor {
        dir: PathBuf,
        model: &'static str,
        name: String,
    },

    #[error("{}: tensor `{name}` has shape {found:?}, expected {expected:?}", file.display())]
    WrongShape {
        file: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("{}: tensor `{name}` has dtype {found}, expected {expected}", file.display())]
    WrongDtype {
        file: PathBuf,
        name: String,
        expected: DType,
        found: DType,
    },
}

/// A borrowed view of one tensor's bytes in a memory-mapped file.
#[derive(Clone, Copy)]
pub struct HostTensor<'a> {
    /// Canonical hub name of the stored tensor.
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    /// Row-major little-endian elements, exactly `numel * dtype.size_bytes()` long.
    pub data: &'a [u8],
}

impl HostTensor<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn size_bytes(&self) -> usize {
        self.data.len()
    }
}

/// Shows everything but the bytes.
impl fmt::Debug for HostTensor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostTensor")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("bytes", &self.data.len())
            .finish()
    }
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// `__metadata__` of the header (string to string, as the format defines it).
    metadata: HashMap<String, String>,
}

/// Where one tensor lives: byte range inside its shard's map.
struct Entry {
    stored_name: String,
    shard: usize,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// An opened checkpoint: all files mapped, all headers parsed, names canonical.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// Canonical name → location; a BTreeMap so every walk is in name order.
    entries: BTreeMap<String, Entry>,
}

impl Checkpoint {
    pub fn open(dir: impl AsRef<Path>) -> Result<Checkpoint, WeightsError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(WeightsError::DirMissing { dir });
        }
        let mut ckpt = Checkpoint {
            dir: dir.clone(),
            shards: Vec::new(),
            entries: BTreeMap::new(),
        };
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        if single.is_file() {
            let (shard, header) = map_shard(&single)?;
            ckpt.shards.push(shard);
            for stored in header.offset_keys() {
                ckpt.insert(0, &header, stored)?;
            }
        } else if index.is_file() {
            for (file, tensors) in read_index(&index)? {
                let path = dir.join(&file);
                if !path.is_file() {
                    return Err(WeightsError::ShardMissing {
                        index,
                        tensor: tensors[0].clone(),
                        shard: file,
                    });
                }
                let (shard, header) = map_shard(&path)?;
                ckpt.shards.push(shard);
                let shard_idx = ckpt.shards.len() - 1;
                // The index is authoritative: shard tensors it does not list are not loaded.
                for stored in tensors {
                    if header.info(&stored).is_none() {
                        return Err(WeightsError::TensorNotInShard {
                            index,
                            tensor: stored,
                            shard: path,
                        });
                    }
                    ckpt.insert(shard_idx, &header, stored)?;
                }
            }
        } else {
            return Err(WeightsError::NoWeightFiles { dir });
        }
        Ok(ckpt)
    }

    fn insert(&mut self, shard: usize, header: &Metadata, stored: String) -> Result<(), WeightsError> {
        let info = header.info(&stored).expect("caller checked the header has the tensor");
        // Offsets are relative to the data section, which starts after the header.
        let data_start = data_start(&self.shards[shard].mmap);
        let entry = Entry {
            dtype: info.dtype,
            shape: info.shape.clone(),
            start: data_start + info.data_offsets.0,
            end: data_start + info.data_offsets.1,
            stored_name: stored,
            shard,
        };
        let name = canonical_name(&entry.stored_name).into_owned();
        if let Some(first) = self.entries.get(&name) {
            return Err(WeightsError::DuplicateTensor {
                name,
                first: first.stored_name.clone(),
                second: entry.stored_name,
            });
        }
        self.entries.insert(name, entry);
        Ok(())
    }

    /// A checkpoint of `specs` held in anonymous memory, each tensor's bytes written by `fill`
    /// (tensors spread over the machine's threads): the weights of `--load-format dummy`
    /// ([`super::random_weights`]). `dir` only names it in messages. bf16 tensors only, like
    /// every checkpoint ocrvl loads.
    pub fn in_memory(
        dir: &Path,
        specs: &[TensorSpec],
        fill: &(dyn Fn(&TensorSpec, &mut [u8]) + Sync),
    ) -> Result<Checkpoint, WeightsError> {
        let label = dir.join("(random weights in memory)");
        if let Some(spec) = specs.iter().find(|s| s.dtype != DType::BF16) {
            return Err(WeightsError::WrongDtype {
                file: label,
                name: spec.name.clone(),
                expected: DType::BF16,
                found: spec.dtype,
            });
        }
        let total: usize = specs.iter().map(TensorSpec::size_bytes).sum();
        let mut map = memmap2::MmapMut::map_anon(total.max(1)).map_err(|source| WeightsError::Io {
            path: label.clone(),
            source,
        })?;
        // Cut the map into one slice per tensor, then let each thread take the next unfilled
        // tensor (largest first, so the last ones to finish are small).
        let mut slices: Vec<(&TensorSpec, &mut [u8])> = Vec::with_capacity(specs.len());
        let mut rest: &mut [u8] = &mut map[..];
        for spec in specs {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(spec.size_bytes());
            slices.push((spec, head));
            rest = tail;
        }
        slices.sort_by_key(|(spec, _)| std::cmp::Reverse(spec.size_bytes()));
        let work = std::sync::Mutex::new(slices.into_iter());
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| loop {
                    let next = work.lock().unwrap_or_else(|e| e.into_inner()).next();
                    let Some((spec, out)) = next else { break };
                    fill(spec, out);
                });
            }
        });
        let mmap = map.make_read_only().map_err(|source| WeightsError::Io {
            path: label.clone(),
            source,
        })?;
        let mut ckpt = Checkpoint {
            dir: dir.to_path_buf(),
            shards: vec![Shard {
                path: label,
                mmap,
                metadata: HashMap::new(),
            }],
            entries: BTreeMap::new(),
        };
        let mut start = 0;
        for spec in specs {
            let end = start + spec.size_bytes();
            let entry = Entry {
                stored_name: spec.name.clone(),
                shard: 0,
                dtype: safetensors::Dtype::BF16,
                shape: spec.shape.clone(),
                start,
                end,
            };
            if ckpt.entries.insert(spec.name.clone(), entry).is_some() {
                return Err(WeightsError::DuplicateTensor {
                    name: spec.name.clone(),
                    first: spec.name.clone(),
                    second: spec.name.clone(),
                });
            }
            start = end;
        }
        Ok(ckpt)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The mapped files, in the order they were opened.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|s| s.path.as_path())
    }

    /// Number of tensors in the checkpoint (used, unused and unknown).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Canonical names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// A `__metadata__` value from the first file that has `key` (synthetic checkpoints mark
    /// themselves there).
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.shards.iter().find_map(|s| s.metadata.get(key).map(String::as_str))
    }

    /// One tensor by canonical name, without checking it against a config.
    pub fn tensor(&self, name: &str) -> Result<HostTensor<'_>, WeightsError> {
        let Some((key, entry)) = self.entries.get_key_value(name) else {
            return Err(WeightsError::MissingTensor {
                dir: self.dir.clone(),
                name: name.to_string(),
            });
        };
        self.view(key, entry)
    }

    fn view<'a>(&'a self, name: &'a str, entry: &'a Entry) -> Result<HostTensor<'a>, WeightsError> {
        let shard = &self.shards[entry.shard];
        let dtype = DType::from_safetensors(entry.dtype).ok_or_else(|| WeightsError::UnsupportedDtype {
            file: shard.path.clone(),
            tensor: entry.stored_name.clone(),
            dtype: format!("{:?}", entry.dtype),
        })?;
        Ok(HostTensor {
            name,
            dtype,
            shape: &entry.shape,
            data: &shard.mmap[entry.start..entry.end],
        })
    }

    /// Checks every tensor the model uses against `cfg`. Only BF16 is accepted: the released
    /// checkpoint is bf16 and so are all kernels, so an f16/f32 file would need a host-side
    /// conversion path that nothing else exercises; it is reported as a wrong dtype instead.
    /// Tensors the model does not use are skipped and counted, never rejected.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<ValidatedWeights<'_>, WeightsError> {
        let unused: HashSet<String> = unused_tensors(cfg).into_iter().map(|s| s.name).collect();
        self.validate_specs(&expected_tensors(cfg), &|name| unused.contains(name), &|spec, found| {
            found == spec.dtype
        })
    }

    /// The family-independent check behind [`Checkpoint::validate`]: every tensor of
    /// `expected` must be present (except `lm_head.weight`, whose absence means tied) with its
    /// shape and a dtype `dtype_ok` accepts; stored tensors outside `expected` are counted as
    /// known-unused when `known_unused` says so and listed as unknown otherwise (a family that
    /// wants them rejected checks [`ValidatedWeights::unknown_skipped`]).
    pub fn validate_specs(
        &self,
        expected: &[TensorSpec],
        known_unused: &dyn Fn(&str) -> bool,
        dtype_ok: &dyn Fn(&TensorSpec, DType) -> bool,
    ) -> Result<ValidatedWeights<'_>, WeightsError> {
        let mut tensors = Vec::with_capacity(expected.len());
        let mut lm_head_tied = false;
        for spec in expected {
            let Some((name, entry)) = self.entries.get_key_value(&spec.name) else {
                // MODEL_SPEC §4.4: no lm_head means it is tied to the token embedding,
                // whatever tie_word_embeddings says.
                if spec.name == LM_HEAD {
                    lm_head_tied = true;
                    continue;
                }
                return Err(WeightsError::MissingTensor {
                    dir: self.dir.clone(),
                    name: spec.name.clone(),
                });
            };
            let file = &self.shards[entry.shard].path;
            if entry.shape != spec.shape {
                return Err(WeightsError::WrongShape {
                    file: file.clone(),
                    name: spec.name.clone(),
                    expected: spec.shape.clone(),
                    found: entry.shape.clone(),
                });
            }
            let tensor = self.view(name, entry)?;
            if !dtype_ok(spec, tensor.dtype) {
                return Err(WeightsError::WrongDtype {
                    file: file.clone(),
                    name: spec.name.clone(),
                    expected: spec.dtype,
                    found: tensor.dtype,
                });
            }
            tensors.push(tensor);
        }

        let used: HashSet<&str> = expected.iter().map(|s| s.name.as_str()).collect();
        let mut unused_skipped = 0;
        let mut unknown_skipped = Vec::new();
        for name in self.entries.keys() {
            if used.contains(name.as_str()) {
                continue;
            } else if known_unused(name) {
                unused_skipped += 1;
            } else {
                unknown_skipped.push(name.clone());
            }
        }
        let position = tensors.iter().enumerate().map(|(i, t)| (t.name, i)).collect();
        Ok(ValidatedWeights {
            tensors,
            position,
            lm_head_tied,
            unused_skipped,
            unknown_skipped,
        })
    }
}

/// The used tensors of a checkpoint that passed [`Checkpoint::validate`].
pub struct ValidatedWeights<'a> {
    /// Inventory order ([`expected_tensors`]); `lm_head.weight` is absent when tied.
    tensors: Vec<HostTensor<'a>>,
    position: HashMap<&'a str, usize>,
    lm_head_tied: bool,
    unused_skipped: usize,
    unknown_skipped: Vec<String>,
}

impl<'a> ValidatedWeights<'a> {
    /// A used tensor by hub name. `lm_head.weight` resolves to the token embedding when tied
    /// (the returned view then carries the embedding's name).
    pub fn get(&self, name: &str) -> Option<HostTensor<'a>> {
        let name = if name == LM_HEAD && self.lm_head_tied {
            EMBED_TOKENS
        } else {
            name
        };
        self.position.get(name).map(|&i| self.tensors[i])
    }

    /// Each distinct stored tensor once, in inventory order: the upload list.
    pub fn iter(&self) -> impl Iterator<Item = HostTensor<'a>> + '_ {
        self.tensors.iter().copied()
    }

    /// Number of distinct tensors to upload.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Bytes of the distinct tensors (a tied lm_head is not counted twice).
    pub fn total_bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.size_bytes()).sum()
    }

    /// True when the checkpoint had no `lm_head.weight` and the embedding stands in for it.
    pub fn lm_head_tied(&self) -> bool {
        self.lm_head_tied
    }

    /// Known-unused tensors present in the checkpoint ([`unused_tensors`]).
    pub fn unused_skipped(&self) -> usize {
        self.unused_skipped
    }

    /// Tensors neither used nor known-unused, in name order (worth a log line).
    pub fn unknown_skipped(&self) -> &[String] {
        &self.unknown_skipped
    }
}

/// `weight_map` grouped by shard file, in file-name order; each group in tensor-name order.
fn read_index(path: &Path) -> Result<BTreeMap<String, Vec<String>>, WeightsError> {
    let malformed = |reason: String| WeightsError::IndexMalformed {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read(path).map_err(|source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| malformed(format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| malformed("no `weight_map` object".into()))?;
    let mut by_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| malformed(format!("`weight_map.{tensor}` is not a file name string")))?;
        // Shards live beside the index; a path that climbs out is not a shard name.
        let plain = Path::new(file).file_name().is_some_and(|f| f == file);
        if !plain {
            return Err(malformed(format!(
                "`weight_map.{tensor}` = {file:?} is not a plain file name"
            )));
        }
        by_file.entry(file.to_string()).or_default().push(tensor.clone());
    }
    if by_file.is_empty() {
        return Err(malformed("`weight_map` is empty".into()));
    }
    // serde_json's map is sorted unless some crate in the build turns on `preserve_order`;
    // sort anyway so error order never depends on feature unification.
    for tensors in by_file.values_mut() {
        tensors.sort();
    }
    Ok(by_file)
}

/// Start of the data section: 8-byte length plus the header. Only called on maps that
/// [`map_shard`] checked.
fn data_start(mmap: &Mmap) -> usize {
    let header_len = u64::from_le_bytes(mmap[..8].try_into().expect("8 bytes"));
    8 + header_len as usize
}

/// Maps one safetensors file and parses its header with the safetensors crate, with our own
/// checks first so a damaged file gets a message that says what is wrong and where.
fn map_shard(path: &Path) -> Result<(Shard, Metadata), WeightsError> {
    let io = |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let corrupt = |reason: String| WeightsError::CorruptHeader {
        file: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    if file_len < 8 {
        return Err(corrupt(format!(
            "file is {file_len} bytes, too short for the 8-byte header length"
        )));
    }
    // SAFETY: the map is read-only and lives as long as the Checkpoint. Like every mmap-based
    // loader we assume nobody truncates or rewrites the file while it is open; doing so is
    // outside what this engine supports.
    let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;

    let header_len = u64::from_le_bytes(mmap[..8].try_into().expect("8 bytes"));
    if header_len > MAX_HEADER_BYTES {
        return Err(corrupt(format!(
            "header length field is {header_len}, over the format's 100 MB limit"
        )));
    }
    if header_len > file_len - 8 {
        return Err(corrupt(format!(
            "header length field is {header_len} bytes but only {} bytes follow it",
            file_len - 8
        )));
    }
    let header_end = 8 + header_len as usize;
    // The crate's Metadata deserializer also checks that offsets are contiguous and match
    // each tensor's shape and dtype.
    let header: Metadata = serde_json::from_slice(&mmap[8..header_end])
        .map_err(|e| corrupt(format!("header is not valid safetensors JSON: {e}")))?;

    let available = file_len - header_end as u64;
    let needed = header.data_len() as u64;
    if needed > available {
        let first_short = header
            .offset_keys()
            .into_iter()
            .find(|name| {
                let info = header.info(name).expect("offset_keys come from the header");
                info.data_offsets.1 as u64 > available
            })
            .expect("some tensor ends past the data");
        let info = header.info(&first_short).expect("present");
        return Err(WeightsError::Truncated {
            file: path.to_path_buf(),
            tensor: first_short.clone(),
            needed: header_end as u64 + info.data_offsets.1 as u64,
            file_len,
        });
    }
    if needed < available {
        return Err(corrupt(format!(
            "{} bytes after the last tensor: the header does not describe the whole file",
            available - needed
        )));
    }
    let metadata = header.metadata().clone().unwrap_or_default();
    let shard = Shard {
        path: path.to_path_buf(),
        mmap,
        metadata,
    };
    Ok((shard, header))
}
