//! Directory watching with inotify: the events behind the `WatchDir`
//! stream and the polling watchers (`CreateWatcher` & co).

use crate::error::EnvdError;
use crate::filesystem::entry::entry_info;
use envd_proto::filesystem::{EventType, FilesystemEvent};
use futures::StreamExt as _;
use inotify::{EventMask, Inotify, WatchMask, Watches};
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Events buffered per stream before the watcher waits for the reader.
const CHANNEL_CAPACITY: usize = 1024;

/// `statfs` magic numbers of network filesystems.
const NETWORK_FS_MAGIC: [i64; 8] = [
    0x6969,      // NFS
    0x517B,      // SMB
    0xFF53_4D42, // CIFS
    0xFE53_4D42, // SMB2
    0x5346_414F, // AFS
    0x7375_7245, // CODA
    0x00C3_6400, // CEPH
    0x6573_5546, // FUSE (sshfs, s3fs, ...; the SDK counts it as network)
];

/// What to watch.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The directory (absolute).
    pub root: PathBuf,
    /// Also watch all subdirectories (present and future).
    pub recursive: bool,
    /// Attach the `EntryInfo` of the subject to each event.
    pub include_entry: bool,
    /// Allow watching a directory on a network filesystem.
    pub allow_network_mounts: bool,
}

fn watch_mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::MODIFY
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
}

fn is_network_mount(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|fs| {
        #[allow(clippy::useless_conversion)] // `__fsword_t` is i32 on some targets
        let magic = i64::from(fs.filesystem_type().0);
        NETWORK_FS_MAGIC.contains(&magic)
    })
}

/// Adds watches on `dir` (relative name `rel`) and, when `recursive`, on
/// every directory below it (not following symlinks).
fn add_tree(
    watches: &mut Watches,
    dirs: &mut HashMap<i32, PathBuf>,
    root: &Path,
    rel: &Path,
    recursive: bool,
) -> std::io::Result<()> {
    let wd = watches.add(root.join(rel), watch_mask())?;
    dirs.insert(wd.get_watch_descriptor_id(), rel.to_path_buf());
    if !recursive {
        return Ok(());
    }
    let Ok(reader) = std::fs::read_dir(root.join(rel)) else {
        return Ok(());
    };
    for entry in reader.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            // Directories can vanish while we walk; that is not an error.
            let _ = add_tree(watches, dirs, root, &rel.join(entry.file_name()), true);
        }
    }
    Ok(())
}

fn event_types(mask: EventMask) -> Vec<EventType> {
    let table = [
        (EventMask::CREATE | EventMask::MOVED_TO, EventType::Create),
        (EventMask::MODIFY, EventType::Write),
        (EventMask::DELETE, EventType::Remove),
        (EventMask::MOVED_FROM, EventType::Rename),
        (EventMask::ATTRIB, EventType::Chmod),
    ];
    table
        .iter()
        .filter(|(bits, _)| mask.intersects(*bits))
        .map(|(_, ty)| *ty)
        .collect()
}

/// Starts watching; events arrive on the returned channel until it is
/// dropped (which stops the watcher).
pub fn watch(options: WatchOptions) -> Result<mpsc::Receiver<FilesystemEvent>, EnvdError> {
    let meta = std::fs::metadata(&options.root)
        .map_err(|e| EnvdError::io(format!("watching {}", options.root.display()), &e))?;
    if !meta.is_dir() {
        return Err(EnvdError::InvalidArgument(format!(
            "path {} is not a directory",
            options.root.display()
        )));
    }
    if !options.allow_network_mounts && is_network_mount(&options.root) {
        return Err(EnvdError::FailedPrecondition(format!(
            "{} is on a network filesystem; set allow_network_mounts to watch it",
            options.root.display()
        )));
    }
    let inotify = Inotify::init().map_err(|e| EnvdError::io("inotify_init", &e))?;
    let mut dirs = HashMap::new();
    let mut watches = inotify.watches();
    add_tree(
        &mut watches,
        &mut dirs,
        &options.root,
        Path::new(""),
        options.recursive,
    )
    .map_err(|e| EnvdError::io(format!("watching {}", options.root.display()), &e))?;
    let stream = inotify
        .into_event_stream(vec![0u8; 64 * 1024])
        .map_err(|e| EnvdError::io("inotify stream", &e))?;
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    tokio::spawn(async move {
        let mut watches = stream.watches();
        let mut stream = stream;
        loop {
            let event = tokio::select! {
                () = tx.closed() => break,
                event = stream.next() => event,
            };
            let Some(Ok(event)) = event else {
                break;
            };
            let id = event.wd.get_watch_descriptor_id();
            if event.mask.contains(EventMask::IGNORED) {
                dirs.remove(&id);
                continue;
            }
            let (Some(dir), Some(name)) = (dirs.get(&id).cloned(), event.name) else {
                continue;
            };
            let rel = dir.join(&name);
            let is_new_dir = event.mask.contains(EventMask::ISDIR)
                && event
                    .mask
                    .intersects(EventMask::CREATE | EventMask::MOVED_TO);
            if options.recursive && is_new_dir {
                let _ = add_tree(&mut watches, &mut dirs, &options.root, &rel, true);
            }
            for ty in event_types(event.mask) {
                let entry = if options.include_entry
                    && ty != EventType::Remove
                    && ty != EventType::Rename
                {
                    entry_info(&options.root.join(&rel)).ok()
                } else {
                    None
                };
                let message = FilesystemEvent {
                    name: rel.to_string_lossy().into_owned(),
                    r#type: ty.into(),
                    entry,
                };
                if tx.send(message).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

#[derive(Debug)]
struct PollingWatcher {
    events: Arc<Mutex<Vec<FilesystemEvent>>>,
    task: JoinHandle<()>,
}

/// Watchers polled with `GetWatcherEvents`, by id.
#[derive(Debug, Default)]
pub struct WatcherRegistry {
    watchers: Mutex<HashMap<String, PollingWatcher>>,
    counter: AtomicU64,
}

impl WatcherRegistry {
    fn watchers(&self) -> MutexGuard<'_, HashMap<String, PollingWatcher>> {
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a watcher whose events are buffered until fetched.
    pub fn create(&self, options: WatchOptions) -> Result<String, EnvdError> {
        let mut rx = watch(options)?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:016x}{n:04x}", RandomState::new().hash_one(n));
        let events = Arc::new(Mutex::new(Vec::new()));
        let buffer = Arc::clone(&events);
        let task = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                buffer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(event);
            }
        });
        self.watchers()
            .insert(id.clone(), PollingWatcher { events, task });
        Ok(id)
    }

    /// Takes the events buffered since the last call.
    pub fn take_events(&self, id: &str) -> Result<Vec<FilesystemEvent>, EnvdError> {
        let watchers = self.watchers();
        let watcher = watchers
            .get(id)
            .ok_or_else(|| EnvdError::NotFound(format!("watcher {id} not found")))?;
        let mut events = watcher
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(std::mem::take(&mut *events))
    }

    /// Stops and forgets a watcher.
    pub fn remove(&self, id: &str) -> Result<(), EnvdError> {
        let watcher = self
            .watchers()
            .remove(id)
            .ok_or_else(|| EnvdError::NotFound(format!("watcher {id} not found")))?;
        watcher.task.abort();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_and_moved_to_map_to_create() {
        let types = event_types(EventMask::MOVED_TO);

        assert_eq!(types, [EventType::Create]);
    }

    #[test]
    fn attrib_maps_to_chmod() {
        let types = event_types(EventMask::ATTRIB);

        assert_eq!(types, [EventType::Chmod]);
    }

    #[tokio::test]
    async fn watching_a_missing_directory_is_not_found() {
        let dir = tempfile::tempdir().unwrap();

        let err = watch(WatchOptions {
            root: dir.path().join("missing"),
            recursive: false,
            include_entry: false,
            allow_network_mounts: false,
        })
        .unwrap_err();

        assert!(matches!(err, EnvdError::NotFound(_)));
    }
}
