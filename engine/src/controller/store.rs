//! The Raft storage of the metadata quorum, in `<data>/__cluster_metadata/`:
//! - `log`: the Raft log, frames of `[u32 length][u32 CRC-32C][JSON entry]`, fsynced on every
//!   append; a torn or corrupt tail (a crash mid-append) is cut off on open;
//! - `meta.json`: the vote, the committed log id and the last purged log id, replaced
//!   atomically (write, fsync, rename, fsync the directory);
//! - `snapshot.json`: the last metadata image snapshot with its Raft meta, replaced atomically.
//!
//! The state machine itself lives in memory: on restart it is the snapshot plus the committed
//! log entries openraft re-applies (we persist `committed` for that).
//!
//! The file IO is blocking: it runs on the controller's own thread, never on a broker shard,
//! and a metadata write is small and rare.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::metadata::{Applied, ApplyResult, MetadataImage};
use super::TypeConfig;

/// Node id of a controller voter (`node.id`).
pub type NodeId = u64;

const LOG_FILE: &str = "log";
const META_FILE: &str = "meta.json";
const SNAPSHOT_FILE: &str = "snapshot.json";
const FRAME_HEADER: usize = 8;
/// A metadata entry larger than this is corruption, not data.
const MAX_FRAME: usize = 64 << 20;

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn write_err(e: io::Error) -> StorageError<NodeId> {
    StorageIOError::write(&e).into()
}

fn read_err(e: io::Error) -> StorageError<NodeId> {
    StorageIOError::read(&e).into()
}

/// Replaces `path` with `bytes` so a crash leaves either the old or the new content.
/// Writes `bytes` to `path` crash-safely: a temporary file, fsync, rename, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    // A unique temporary name: a snapshot build and a snapshot install may overlap.
    static NEXT_TMP: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!("tmp{}", NEXT_TMP.fetch_add(1, Ordering::Relaxed)));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct LogMeta {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

#[derive(Debug)]
struct LogInner {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    meta: LogMeta,
}

/// A file of [`RESERVE_BYTES`] kept beside the metadata log and given up the first time a
/// metadata write finds the disk full: the partitions' data may fill the disk, and the broker
/// must still register, heartbeat and elect (openraft stops for good on a failed write).
/// Recreated on the next start that finds the space.
const RESERVE_FILE: &str = "space-reserve";
const RESERVE_BYTES: usize = 512 * 1024;

fn is_disk_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}

/// Creates the reserve if it is missing; a disk without room for it only gets a warning.
fn ensure_reserve(dir: &Path) {
    let path = dir.join(RESERVE_FILE);
    if path.exists() {
        return;
    }
    let made = File::create(&path).and_then(|mut f| {
        f.write_all(&vec![0u8; RESERVE_BYTES])?;
        f.sync_all()
    });
    if let Err(e) = made {
        let _ = fs::remove_file(&path);
        tracing::warn!(error = %e, "no room for the metadata log's space reserve");
    }
}

/// Runs `write`; when it finds the disk full and the reserve is still there, frees the
/// reserve and runs it once more.
fn with_reserve<T>(dir: &Path, mut write: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    match write() {
        Err(e) if is_disk_full(&e) && fs::remove_file(dir.join(RESERVE_FILE)).is_ok() => {
            tracing::warn!(
                "disk full: released the metadata log's {} KiB reserve so the controller keeps running; free space and restart to restore it",
                RESERVE_BYTES / 1024
            );
            write()
        }
        other => other,
    }
}

fn encode_frame(entry: &Entry<TypeConfig>, out: &mut Vec<u8>) -> io::Result<()> {
    let body = serde_json::to_vec(entry).map_err(io_err)?;
    let len = u32::try_from(body.len()).map_err(io_err)?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Decodes frames until the end or the first torn/corrupt one; returns entries and the length
/// of the valid prefix.
pub(crate) fn decode_frames(bytes: &[u8]) -> (Vec<Entry<TypeConfig>>, usize) {
    let mut pos = 0;
    let mut entries = Vec::new();
    while bytes.len() - pos >= FRAME_HEADER {
        let len = u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
            as usize;
        let crc = u32::from_be_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]);
        if len > MAX_FRAME || bytes.len() - pos - FRAME_HEADER < len {
            break;
        }
        let body = &bytes[pos + FRAME_HEADER..pos + FRAME_HEADER + len];
        if crc32c::crc32c(body) != crc {
            break;
        }
        match serde_json::from_slice(body) {
            Ok(entry) => entries.push(entry),
            Err(_) => break,
        }
        pos += FRAME_HEADER + len;
    }
    (entries, pos)
}

impl LogInner {
    fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        ensure_reserve(dir);
        let meta = match fs::read(dir.join(META_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(io_err)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => LogMeta::default(),
            Err(e) => return Err(e),
        };
        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (decoded, valid) = decode_frames(&bytes);
        if valid < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                valid,
                total = bytes.len(),
                "metadata log has a torn or corrupt tail; truncating"
            );
            file.set_len(valid as u64)?;
            file.sync_all()?;
        }
        let purged = meta.last_purged.map(|l| l.index);
        let entries = decoded
            .into_iter()
            .filter(|e| purged.is_none_or(|p| e.log_id.index > p))
            .map(|e| (e.log_id.index, e))
            .collect();
        Ok(LogInner {
            dir: dir.to_path_buf(),
            file,
            entries,
            meta,
        })
    }

    fn save_meta(&self) -> io::Result<()> {
        let bytes = serde_json::to_vec(&self.meta).map_err(io_err)?;
        let path = self.dir.join(META_FILE);
        with_reserve(&self.dir, || write_atomic(&path, &bytes))
    }

    /// Appends and fsyncs `batch`; the entries become readable only once they are durable.
    fn append(&mut self, batch: Vec<Entry<TypeConfig>>) -> io::Result<()> {
        let mut buf = Vec::new();
        for entry in &batch {
            encode_frame(entry, &mut buf)?;
        }
        let dir = self.dir.clone();
        let file = &mut self.file;
        let start = file.metadata()?.len();
        with_reserve(&dir, || {
            let written = file.write_all(&buf).and_then(|()| file.sync_data());
            if written.is_err() {
                // A partial frame must not stay in front of the retried one.
                file.set_len(start)?;
            }
            written
        })?;
        for entry in batch {
            debug_assert!(
                self.entries
                    .keys()
                    .next_back()
                    .is_none_or(|&last| entry.log_id.index == last + 1),
                "metadata log would get a hole"
            );
            self.entries.insert(entry.log_id.index, entry);
        }
        Ok(())
    }

    /// Rewrites the log file from memory after a truncate or purge (the metadata log is small).
    fn rewrite(&mut self) -> io::Result<()> {
        let mut buf = Vec::new();
        for entry in self.entries.values() {
            encode_frame(entry, &mut buf)?;
        }
        let path = self.dir.join(LOG_FILE);
        with_reserve(&self.dir, || write_atomic(&path, &buf))?;
        self.file = OpenOptions::new().read(true).append(true).open(&path)?;
        Ok(())
    }
}

/// The Raft log and vote store. Cloned as its own log reader.
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, cutting a torn tail.
    pub fn open(dir: &Path) -> io::Result<Self> {
        Ok(LogStore {
            inner: Arc::new(Mutex::new(LogInner::open(dir)?)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way the
        // file does not also show, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.meta.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.meta.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.meta.vote = Some(*vote);
        inner
            .save_meta()
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().meta.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.meta.committed = committed;
        inner.save_meta().map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().meta.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let batch: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let result = self.lock().append(batch);
        if let Err(e) = &result {
            tracing::error!(error = %e, "metadata log append failed");
        }
        let failed = result
            .as_ref()
            .err()
            .map(|e| io::Error::new(e.kind(), e.to_string()));
        callback.log_io_completed(result);
        match failed {
            Some(e) => Err(write_err(e)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.entries.retain(|&i, _| i < log_id.index);
        inner.rewrite().map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        // Record the purge point first: a crash after it and before the rewrite only leaves
        // entries that open() skips.
        inner.meta.last_purged = Some(log_id);
        inner.save_meta().map_err(write_err)?;
        inner.entries.retain(|&i, _| i > log_id.index);
        inner.rewrite().map_err(write_err)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    image: MetadataImage,
}

/// The metadata state machine behind openraft: the in-memory [`MetadataImage`], its applied
/// position, and the snapshot file. Every applied batch is published on a watch channel.
#[derive(Debug)]
pub struct StateMachineStore {
    dir: PathBuf,
    image: MetadataImage,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    publish: watch::Sender<Arc<MetadataImage>>,
    snapshots_built: u64,
}

impl StateMachineStore {
    /// Opens the state machine in `dir`, restoring the last snapshot if there is one.
    pub fn open(dir: &Path, publish: watch::Sender<Arc<MetadataImage>>) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut sm = StateMachineStore {
            dir: dir.to_path_buf(),
            image: MetadataImage::new(),
            last_applied: None,
            membership: StoredMembership::default(),
            publish,
            snapshots_built: 0,
        };
        if let Some(stored) = read_snapshot(dir)? {
            sm.image = stored.image;
            sm.last_applied = stored.meta.last_log_id;
            sm.membership = stored.meta.last_membership;
            sm.publish.send_replace(Arc::new(sm.image.clone()));
        }
        Ok(sm)
    }
}

fn read_snapshot(dir: &Path) -> io::Result<Option<StoredSnapshot>> {
    match fs::read(dir.join(SNAPSHOT_FILE)) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(io_err)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Persists `stored` unless the snapshot on disk is already newer (a build that started
/// before an install finished must not replace it), and returns the snapshot payload.
fn write_snapshot(dir: &Path, stored: &StoredSnapshot) -> io::Result<Vec<u8>> {
    let newer_on_disk = read_snapshot(dir)
        .ok()
        .flatten()
        .is_some_and(|current| current.meta.last_log_id > stored.meta.last_log_id);
    if newer_on_disk {
        tracing::debug!(last_log_id = ?stored.meta.last_log_id, "older snapshot not persisted");
    } else {
        let bytes = serde_json::to_vec(stored).map_err(io_err)?;
        write_atomic(&dir.join(SNAPSHOT_FILE), &bytes)?;
    }
    stored.image.to_snapshot().map_err(io_err)
}

/// Builds a snapshot from a copy of the state machine taken when openraft asked for it.
#[derive(Debug)]
pub struct SnapshotBuilder {
    dir: PathBuf,
    image: MetadataImage,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    id: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.id),
            None => format!("none-{}", self.id),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            image: self.image.clone(),
        };
        let data = write_snapshot(&self.dir, &stored).map_err(|e| {
            StorageError::from(StorageIOError::write_snapshot(Some(meta.signature()), &e))
        })?;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "metadata snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => results.push(Ok(Applied::Done)),
                EntryPayload::Normal(command) => {
                    let result = self.image.apply(entry.log_id.index, &command);
                    if let Err(e) = &result {
                        tracing::debug!(index = entry.log_id.index, error = %e, "metadata command rejected");
                    }
                    results.push(result);
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    results.push(Ok(Applied::Done));
                }
            }
        }
        self.publish.send_replace(Arc::new(self.image.clone()));
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots_built += 1;
        SnapshotBuilder {
            dir: self.dir.clone(),
            image: self.image.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            id: self.snapshots_built,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let image = MetadataImage::from_snapshot(snapshot.get_ref()).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                &io_err(e),
            ))
        })?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            image,
        };
        write_snapshot(&self.dir, &stored).map_err(|e| {
            StorageError::from(StorageIOError::write_snapshot(Some(meta.signature()), &e))
        })?;
        self.image = stored.image;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.publish.send_replace(Arc::new(self.image.clone()));
        tracing::info!(last_log_id = ?meta.last_log_id, "metadata snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let Some(stored) = read_snapshot(&self.dir).map_err(read_err)? else {
            return Ok(None);
        };
        let data = stored
            .image
            .to_snapshot()
            .map_err(|e| read_err(io_err(e)))?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn log_vote_truncate_and_purge_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        store
            .lock()
            .append((1..=6).map(|i| entry(1, i)).collect())
            .unwrap();
        let vote = Vote::new(3, 2);
        store.save_vote(&vote).await.unwrap();
        store.truncate(entry(1, 6).log_id).await.unwrap();
        store.purge(entry(1, 2).log_id).await.unwrap();
        store.lock().append(vec![entry(2, 6)]).unwrap();
        drop(store);

        let mut reopened = LogStore::open(dir.path()).unwrap();
        assert_eq!(reopened.read_vote().await.unwrap(), Some(vote));
        let state = reopened.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(entry(1, 2).log_id));
        assert_eq!(state.last_log_id, Some(entry(2, 6).log_id));
        let entries = reopened.try_get_log_entries(0..100).await.unwrap();
        let ids: Vec<_> = entries.iter().map(|e| e.log_id).collect();
        let expected: Vec<_> = (3..=5)
            .map(|i| entry(1, i).log_id)
            .chain([entry(2, 6).log_id])
            .collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn a_full_disk_spends_the_reserve_once_then_fails() {
        let dir = tempfile::tempdir().unwrap();
        ensure_reserve(dir.path());
        assert!(dir.path().join(RESERVE_FILE).exists());
        let mut calls = 0;
        let full = || io::Error::from(io::ErrorKind::StorageFull);
        let ok = with_reserve(dir.path(), || {
            calls += 1;
            if calls == 1 {
                Err(full())
            } else {
                Ok(calls)
            }
        });
        assert_eq!(ok.unwrap(), 2, "retried once the reserve was freed");
        assert!(!dir.path().join(RESERVE_FILE).exists());
        let err = with_reserve(dir.path(), || -> io::Result<()> { Err(full()) });
        assert!(err.is_err(), "no reserve left: the error stands");
        ensure_reserve(dir.path());
        assert!(
            dir.path().join(RESERVE_FILE).exists(),
            "recreated when there is room"
        );
    }

    #[test]
    fn torn_tail_is_cut_and_prefix_kept() {
        let mut buf = Vec::new();
        for i in 1..=3 {
            encode_frame(&entry(1, i), &mut buf).unwrap();
        }
        let whole = buf.len();
        buf.extend_from_slice(&[0, 0, 0, 50, 1, 2]);
        let (entries, valid) = decode_frames(&buf);
        assert_eq!(entries.len(), 3);
        assert_eq!(valid, whole);
        // A flipped byte in the last frame's body ends the log before it.
        let mut corrupt = buf[..whole].to_vec();
        let last = corrupt.len() - 2;
        corrupt[last] ^= 0xff;
        let (entries, _) = decode_frames(&corrupt);
        assert_eq!(entries.len(), 2);
    }
}
