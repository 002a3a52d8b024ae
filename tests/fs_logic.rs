//! The filesystem logic without the kernel: `WsFs` over an in-memory store. Fast checks of the
//! read path's edge cases (extent and chunk boundaries, EOF, EIO) and of readdir offsets.

use bytes::Bytes;
use object_store::memory::InMemory;
use object_store::ObjectStore;
use std::sync::Arc;
use std::time::Duration;
use wsfs::fetcher::Fetcher;
use wsfs::fs::{FsError, InodeTable, WsFs};
use wsfs::manifest::chunker::{compress, LayerBuilder, Meta, NewChunk};
use wsfs::manifest::{keys, EntryKind, RootMeta};
use wsfs::store::{Chain, Limits, Provider};

fn meta(p: &str) -> Meta {
    Meta {
        path: p.as_bytes().to_vec(),
        mode: 0o644,
        mtime_sec: 1,
        mtime_nsec: 2,
    }
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 9) as u8))
        .collect()
}

/// Builds a layer, stores its chunks, returns the filesystem and the original file contents.
async fn build(files: &[(&str, Vec<u8>)], dirs: &[&str]) -> (WsFs, Arc<InMemory>) {
    let store = Arc::new(InMemory::new());
    let mut b = LayerBuilder::new();
    let mut pending: Vec<(String, Bytes)> = Vec::new();
    let mut sink = |c: NewChunk| -> Result<(), std::io::Error> {
        pending.push((keys::chunk(&c.hash), Bytes::from(compress(&c.raw)?)));
        Ok(())
    };
    let mut all: Vec<(&str, Option<&Vec<u8>>)> = dirs.iter().map(|d| (*d, None)).collect();
    all.extend(files.iter().map(|(p, d)| (*p, Some(d))));
    all.sort_by(|a, b| a.0.cmp(b.0));
    for (p, d) in all {
        match d {
            None => b.add_dir(meta(p)),
            Some(d) => b
                .add_file(
                    meta(p),
                    d.len() as u64,
                    std::io::Cursor::new(d.clone()),
                    &mut sink,
                )
                .unwrap(),
        }
    }
    b.flush(&mut sink).unwrap();
    for (i, (k, v)) in pending.iter().enumerate() {
        b.set_stored(i as u32, v.len() as u32, Vec::new());
        store
            .put(
                &object_store::path::Path::from(k.as_str()),
                v.clone().into(),
            )
            .await
            .unwrap();
    }
    let m = b.finish("ws".into(), "l".into(), vec![], 0);
    let table =
        InodeTable::build(&m.entries, m.chunks.clone(), &m.frames, RootMeta::default()).unwrap();
    (fs_over(table, store.clone()), store)
}

/// The filesystem over `table`, reading chunks from `store`.
fn fs_over(table: InodeTable, store: Arc<InMemory>) -> WsFs {
    let chain = Arc::new(Chain::new(vec![Provider::from_store(
        "mem",
        store.clone(),
        Limits::default(),
    )]));
    let fetcher = Fetcher::new(chain, 64 << 20, None, Duration::from_secs(5));
    WsFs::new(table, fetcher, 1000, 1000)
}

/// `table`'s bytes with inode `ino`'s 48-byte record changed by `edit`, reopened without the
/// whole-tree check: what the per-use checks alone must handle.
fn damaged(table: &InodeTable, ino: u64, edit: impl Fn(&mut [u8])) -> InodeTable {
    let mut raw = table.as_bytes().to_vec();
    let recs = u64::from_le_bytes(raw[24..32].try_into().unwrap()) as usize;
    let at = recs + (ino as usize - 1) * 48;
    edit(&mut raw[at..at + 48]);
    let mut buf = vec![0u64; raw.len().div_ceil(8)];
    for (i, b) in raw.iter().enumerate() {
        buf[i / 8] |= u64::from(*b) << (8 * (i % 8));
    }
    InodeTable::open(buf, raw.len()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_entry_is_eio_where_it_is_used_and_the_rest_serves() {
    let (fs, store) = build(
        &[
            ("d/a", data(10, 1)),
            ("d/bad", data(20, 2)),
            ("d/c", data(30, 3)),
            ("e/ok", data(40, 4)),
        ],
        &["d", "e"],
    )
    .await;
    let d = fs.lookup(1, b"d").unwrap().ino;
    let bad = fs.lookup(d, b"bad").unwrap().ino;
    let eio = |e: FsError| {
        assert_eq!(e.errno(), libc::EIO, "{e}");
        assert!(e.to_string().contains("damaged"), "{e}");
    };
    // Each kind of damage to d/bad's record: its size, its kind, its parent, its name's place.
    let edits: [fn(&mut [u8]); 4] = [
        |r| r[0] ^= 1,
        |r| r[46] = 7,
        |r| r[16..20].copy_from_slice(&99u32.to_le_bytes()),
        |r| r[20..24].copy_from_slice(&u32::MAX.to_le_bytes()),
    ];
    for (i, edit) in edits.into_iter().enumerate() {
        let fs = fs_over(damaged(fs.table(), bad, edit), store.clone());
        match fs.lookup(d, b"bad") {
            Err(e) => eio(e),
            Ok(_) => panic!("damage {i}: a damaged entry was looked up"),
        }
        eio(fs.attr(bad).unwrap_err());
        eio(fs.read(bad, 0, 100).await.unwrap_err());
        // A listing of d is whole or fails: it reaches the damaged entry and fails there.
        let items: Vec<_> = fs.readdir(d, 0).unwrap().collect();
        assert!(
            items.iter().any(|i| i.is_err()),
            "the listing stops at the damage"
        );
        // A sibling serves its verified bytes, or — when the damage is in a name the lookup's
        // binary search must compare — fails loudly too; never other bytes.
        match fs.lookup(d, b"a") {
            Ok(a) => assert_eq!(fs.read(a.ino, 0, 100).await.unwrap(), data(10, 1)),
            Err(e) => {
                assert_eq!(i, 3, "only a damaged name stops a sibling's lookup");
                eio(e)
            }
        }
        // Another directory serves as before.
        let e = fs.lookup(1, b"e").unwrap().ino;
        assert_eq!(
            fs.read(fs.lookup(e, b"ok").unwrap().ino, 0, 100)
                .await
                .unwrap(),
            data(40, 4)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_return_exact_bytes_across_extents_and_stop_at_eof() {
    let big = data(9 << 20, 1);
    let small = data(1000, 2);
    let (fs, _) = build(
        &[("big.bin", big.clone()), ("d/small", small.clone())],
        &["d"],
    )
    .await;
    let ino = fs.lookup(1, b"big.bin").unwrap().ino;
    // Reads at every interesting offset: starts, chunk boundaries (wherever CDC put them), EOF.
    let mut offsets: Vec<u64> = vec![0, 1, 4095, 4096, (1 << 20) - 1, 1 << 20, (4 << 20) + 7];
    offsets.extend([
        big.len() as u64 - 1,
        big.len() as u64 - 100,
        big.len() as u64,
        big.len() as u64 + 10,
    ]);
    for &off in &offsets {
        for size in [1u32, 4096, 131072, 1 << 20, 5 << 20] {
            let got = fs.read(ino, off, size).await.unwrap();
            let end = (off as usize).saturating_add(size as usize).min(big.len());
            let want = if (off as usize) >= big.len() {
                &[][..]
            } else {
                &big[off as usize..end]
            };
            assert_eq!(got.len(), want.len(), "length at {off}+{size}");
            assert!(got == want, "bytes at {off}+{size}");
        }
    }
    let sino = fs
        .lookup(fs.lookup(1, b"d").unwrap().ino, b"small")
        .unwrap()
        .ino;
    assert_eq!(fs.read(sino, 10, 100).await.unwrap(), small[10..110]);
    assert_eq!(fs.attr(sino).unwrap().size, 1000);
    assert_eq!(fs.attr(sino).unwrap().uid, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_chunk_is_eio_and_metadata_still_works() {
    let big = data(3 << 20, 3);
    let (fs, store) = build(&[("f", big.clone()), ("g", data(100, 4))], &[]).await;
    // Remove every chunk from the only store.
    let keys: Vec<_> = {
        use futures::StreamExt;
        store
            .list(None)
            .map(|m| m.unwrap().location)
            .collect()
            .await
    };
    for k in keys {
        store.delete(&k).await.unwrap();
    }
    let ino = fs.lookup(1, b"f").unwrap().ino;
    let e = fs.read(ino, 1 << 20, 4096).await.unwrap_err();
    assert!(matches!(e, FsError::Io { .. }), "{e}");
    assert_eq!(e.errno(), libc::EIO);
    assert_eq!(fs.attr(ino).unwrap().size, big.len() as u64);
    assert_eq!(fs.ledger.recent().len(), 1);
    assert_eq!(fs.ledger.recent()[0].path, "f");
    assert_eq!(fs.ledger.recent()[0].count, 1);
    // The same failure again (as the kernel's synchronous retry of a failed read-ahead does):
    // counted on the same entry, not a second line; every EIO is still counted.
    fs.read(ino, 1 << 20, 4096).await.unwrap_err();
    assert_eq!(fs.ledger.recent().len(), 1);
    assert_eq!(fs.ledger.recent()[0].count, 2);
    assert_eq!(fs.stats.eio.load(std::sync::atomic::Ordering::Relaxed), 2);
    // Another file's failure is another entry.
    let g = fs.lookup(1, b"g").unwrap().ino;
    fs.read(g, 0, 4096).await.unwrap_err();
    assert_eq!(fs.ledger.recent().len(), 2);
    assert_eq!(fs.ledger.recent()[1].path, "g");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdir_offsets_resume_and_errors_map_to_errno() {
    let files: Vec<(String, Vec<u8>)> = (0..50)
        .map(|i| (format!("dir/f{i:02}"), vec![i as u8]))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, d)| (p.as_str(), d.clone())).collect();
    let (fs, _) = build(&refs, &["dir", "dir/sub"]).await;
    let dir = fs.lookup(1, b"dir").unwrap().ino;
    let all: Vec<(u64, Vec<u8>)> = fs
        .readdir(dir, 0)
        .unwrap()
        .map(|i| i.map(|i| (i.next, i.name.to_vec())).unwrap())
        .collect();
    assert_eq!(all.len(), 2 + 51, ". .. 50 files and sub");
    assert_eq!(all[0].1, b".");
    assert_eq!(all[1].1, b"..");
    // Resuming at every offset gives exactly the rest.
    for k in 0..all.len() {
        let rest: Vec<Vec<u8>> = fs
            .readdir(dir, all[k].0)
            .unwrap()
            .map(|i| i.unwrap().name.to_vec())
            .collect();
        let want: Vec<Vec<u8>> = all[k + 1..].iter().map(|(_, n)| n.clone()).collect();
        assert_eq!(rest, want, "resume after {k}");
    }
    let sub = fs.lookup(dir, b"sub").unwrap();
    assert_eq!(sub.kind, EntryKind::Dir);
    assert_eq!(fs.attr(dir).unwrap().nlink, 3, "2 + one subdirectory");
    assert_eq!(fs.lookup(dir, b"nope").unwrap_err().errno(), libc::ENOENT);
    let f = fs.lookup(dir, b"f01").unwrap().ino;
    assert_eq!(fs.lookup(f, b"x").unwrap_err().errno(), libc::ENOTDIR);
    assert_eq!(
        fs.readdir(f, 0).err().map(|e| e.errno()),
        Some(libc::ENOTDIR)
    );
    assert_eq!(fs.open(f, true).unwrap_err().errno(), libc::EROFS);
    assert_eq!(fs.open(dir, false).unwrap_err().errno(), libc::EISDIR);
    assert_eq!(fs.readlink(f).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(fs.attr(999_999).unwrap_err().errno(), libc::ENOENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_of_one_chunk_fetch_it_once() {
    use wsfs::store::fault::{Fault, FaultStore};
    let content = data(100_000, 9);
    let (fs0, store) = build(&[("f", content.clone())], &[]).await;
    // Same tree, but reads go through a slow, counting store.
    let slow = Arc::new(FaultStore::new(store.clone()));
    slow.add("", Fault::Delay(Duration::from_millis(300)), None);
    let chain = Arc::new(Chain::new(vec![Provider::from_store(
        "slow",
        slow.clone(),
        Limits::default(),
    )]));
    let ino = fs0.lookup(1, b"f").unwrap().ino;
    let node = fs0.table().get(ino).unwrap();
    let chunk = *fs0.table().chunk(node.extents()[0].chunk).unwrap();
    let fetcher = Fetcher::new(chain, 64 << 20, None, Duration::from_secs(5));
    let results = futures::future::join_all((0..16).map(|_| fetcher.get(&chunk))).await;
    for r in results {
        assert_eq!(r.unwrap().len(), chunk.raw_len as usize);
    }
    assert_eq!(slow.gets(), 1, "16 concurrent readers share one GET");
    // And a read deadline shorter than the store's delay ends in an error, not a hang.
    slow.clear();
    slow.add("", Fault::Hang, None);
    let chain = Arc::new(Chain::new(vec![Provider::from_store(
        "hung",
        slow.clone(),
        Limits::default(),
    )]));
    let fetcher = Fetcher::new(chain, 64 << 20, None, Duration::from_millis(500));
    let t = std::time::Instant::now();
    let e = fetcher.get(&chunk).await.unwrap_err();
    assert!(matches!(e, wsfs::fetcher::FetchError::Deadline(_)), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "the deadline bounds the wait"
    );
}

/// Records what would be pushed into the page cache.
/// (inode, bytes) in the order they were pushed.
type Pushed = Vec<(u64, Vec<u8>)>;

#[derive(Clone, Default)]
struct RecordingSink(Arc<std::sync::Mutex<Pushed>>);

impl wsfs::fs::pages::PageCacheSink for RecordingSink {
    fn store(&self, ino: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.lock().unwrap().push((ino, data.to_vec()));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_pushes_exactly_its_packs_other_files_once_within_budget() {
    use wsfs::fs::neighbours::Packs;
    let mut files: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| (format!("a/f{i:02}"), data(300 + 50 * i, i as u8)))
        .collect();
    files.push(("b/x".into(), data(70, 200)));
    // A chunk of its own: never pushed.
    files.push(("b/big".into(), data(100_000, 201)));
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, d)| (p.as_str(), d.clone())).collect();
    let (fs, _) = build(&refs, &["a", "b"]).await;
    let a = fs.lookup(1, b"a").unwrap().ino;
    let b = fs.lookup(1, b"b").unwrap().ino;
    let f05 = fs.lookup(a, b"f05").unwrap().ino;
    // Bring the pack into memory, as the READ of f05 does.
    assert_eq!(fs.read(f05, 0, 1 << 20).await.unwrap(), files[5].1);
    let sink = RecordingSink::default();
    let push = |packs: &mut Packs, ino: u64| {
        let (fs, sink) = (&fs, sink.clone());
        tokio::task::block_in_place(|| packs.push_after_read(fs, &sink, ino))
    };
    let mut packs = Packs::new(fs.table());

    // Nothing is pushed into directories the warm-up has not listed, nor without a budget.
    fs.pages.set_budget(1 << 30);
    push(&mut packs, f05);
    assert!(sink.0.lock().unwrap().is_empty());

    // Listed (the warm-up got there): the next read from the pack pushes every other small file
    // of it, each with exactly its bytes, once.
    fs.pages.mark_listed(a);
    fs.pages.mark_listed(b);
    push(&mut packs, f05);
    let pushed = sink.0.lock().unwrap().clone();
    let mut want: Vec<(u64, Vec<u8>)> = files
        .iter()
        .filter(|(p, _)| p != "a/f05" && p != "b/big")
        .map(|(p, d)| {
            let (dir, name) = p.split_once('/').unwrap();
            let parent = if dir == "a" { a } else { b };
            (fs.lookup(parent, name.as_bytes()).unwrap().ino, d.clone())
        })
        .collect();
    want.sort();
    let mut got = pushed.clone();
    got.sort();
    assert_eq!(got, want);
    // The files after the one read come first.
    assert_eq!(pushed[0].0, fs.lookup(a, b"f06").unwrap().ino);
    // Once per pack: another read from it pushes nothing more.
    let f20 = fs.lookup(a, b"f20").unwrap().ino;
    push(&mut packs, f20);
    assert_eq!(sink.0.lock().unwrap().len(), pushed.len());
    assert_eq!(
        fs.pages
            .neighbour_files
            .load(std::sync::atomic::Ordering::Relaxed),
        pushed.len() as u64
    );

    // A budget of two pages pushes two files and stops.
    let (fs2, _) = build(&refs, &["a", "b"]).await;
    let a2 = fs2.lookup(1, b"a").unwrap().ino;
    fs2.pages.mark_listed(a2);
    fs2.pages.mark_listed(fs2.lookup(1, b"b").unwrap().ino);
    fs2.pages.set_budget(2 * 4096);
    let g05 = fs2.lookup(a2, b"f05").unwrap().ino;
    fs2.read(g05, 0, 1 << 20).await.unwrap();
    let sink2 = RecordingSink::default();
    let mut packs2 = Packs::new(fs2.table());
    tokio::task::block_in_place(|| packs2.push_after_read(&fs2, &sink2, g05));
    assert_eq!(sink2.0.lock().unwrap().len(), 2);
    assert_eq!(fs2.pages.budget_left(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_order_puts_packs_before_large_files_whatever_their_paths() {
    // `build/` (large artifacts) sorts before `src/` (small files).
    let files = vec![
        ("build/app.bin", data(3 << 20, 3)),
        ("src/a.c", data(2000, 4)),
        ("src/b.c", data(3000, 5)),
    ];
    let (fs, _) = build(&files, &["build", "src"]).await;
    let t = fs.table();
    let order = t.chunks_in_path_order();
    assert_eq!(order.len(), t.chunk_count(), "every chunk once");
    let small = t
        .get(
            t.lookup(t.lookup(1, b"src").unwrap().unwrap(), b"a.c")
                .unwrap()
                .unwrap(),
        )
        .unwrap();
    let pack = t.chunk(small.extents()[0].chunk).unwrap().hash;
    assert_eq!(order[0].hash, pack, "the pack of the sources first");
}
