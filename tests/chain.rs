//! The verified failover chain: every kind of miss on every provider position moves on to the next
//! provider, a success is only ever the exact bytes, and the circuit breaker, layer resolution
//! and repair-on-read behave. Stores are in-memory object stores wrapped in `FaultStore`.

use bytes::Bytes;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutPayload};
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wsfs::manifest::chunker::{compress, LayerBuilder, Meta, NewChunk};
use wsfs::manifest::{encode, keys, ChunkInfo, Digest, LayerRef, Manifest};
use wsfs::store::breaker::State;
use wsfs::store::fault::{Fault, FaultStore};
use wsfs::store::{AllMissed, Chain, Limits, Outcome, OutcomeKind, Provider, VerifiedChunk};

// ---------------------------------------------------------------------------------------------
// An allocator that records the largest single allocation made by the current thread while
// tracking is on, so the decompression-bomb test can show the output stays bounded.
// ---------------------------------------------------------------------------------------------

struct PeakTracking;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let _ = PEAK.try_with(|p| p.set(p.get().max(size)));
        }
    });
}

unsafe impl GlobalAlloc for PeakTracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: PeakTracking = PeakTracking;

/// Runs `f` and returns its result and the largest single allocation it made on this thread.
fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    TRACKING.with(|t| t.set(true));
    let r = f();
    TRACKING.with(|t| t.set(false));
    (r, PEAK.with(|p| p.get()))
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const TIMEOUT: Duration = Duration::from_millis(300);

fn limits() -> Limits {
    Limits {
        request_timeout: TIMEOUT,
        connect_timeout: TIMEOUT,
        retries: 0,
        concurrency: 32,
    }
}

/// One provider's backing store: the raw in-memory store and the fault-injecting wrapper.
struct Node {
    mem: Arc<InMemory>,
    fault: Arc<FaultStore>,
}

impl Node {
    fn new() -> Node {
        let mem = Arc::new(InMemory::new());
        let fault = Arc::new(FaultStore::new(mem.clone() as Arc<dyn ObjectStore>));
        Node { mem, fault }
    }

    fn provider(&self, name: &str) -> Provider {
        Provider::from_store(name, self.fault.clone() as Arc<dyn ObjectStore>, limits())
    }

    async fn put(&self, key: &str, bytes: &[u8]) {
        self.mem
            .put(&StorePath::from(key), PutPayload::from(bytes.to_vec()))
            .await
            .unwrap();
    }

    async fn get(&self, key: &str) -> Option<Bytes> {
        match self.mem.get(&StorePath::from(key)).await {
            Ok(r) => Some(r.bytes().await.unwrap()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("{e}"),
        }
    }
}

/// `n` nodes and a chain over them, named `p0`, `p1`, … in order.
fn chain_of(n: usize) -> (Vec<Node>, Chain) {
    let nodes: Vec<Node> = (0..n).map(|_| Node::new()).collect();
    let providers = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| node.provider(&format!("p{i}")))
        .collect();
    (nodes, Chain::new(providers))
}

#[derive(Clone)]
struct Chunk {
    raw: Vec<u8>,
    stored: Vec<u8>,
    info: ChunkInfo,
}

impl Chunk {
    fn key(&self) -> String {
        keys::chunk(&self.info.hash)
    }
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

fn chunk_of(raw: Vec<u8>) -> Chunk {
    let stored = compress(&raw).unwrap();
    let info = ChunkInfo {
        hash: Digest::of(&raw),
        raw_len: raw.len() as u32,
        stored_len: stored.len() as u32,
    };
    Chunk { raw, stored, info }
}

fn random_chunk(seed: u64, len: usize) -> Chunk {
    chunk_of(random_bytes(seed, len))
}

fn labels(attempts: &[wsfs::store::Attempt]) -> Vec<&'static str> {
    attempts.iter().map(|a| a.outcome.label()).collect()
}

// ---------------------------------------------------------------------------------------------
// Failover on a primary that misses
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn not_found_on_primary_is_served_from_secondary() {
    let (nodes, chain) = chain_of(2);
    let c = random_chunk(1, 50_000);
    nodes[1].put(&c.key(), &c.stored).await;

    let served = chain.fetch_chunk(&c.info).await.unwrap();
    assert_eq!(served.value.data().as_ref(), c.raw.as_slice());
    assert_eq!(served.value.hash(), c.info.hash);
    assert_eq!(served.provider, 1);
    assert_eq!(served.attempts.len(), 2);
    assert_eq!(served.attempts[0].provider, "p0");
    assert_eq!(served.attempts[0].outcome, Outcome::NotFound);
    assert_eq!(served.attempts[1].provider, "p1");
    assert_eq!(served.attempts[1].outcome, Outcome::Hit);
    assert_eq!(chain.stats.failovers.load(Relaxed), 1);
    assert_eq!(chain.stats.all_missed.load(Relaxed), 0);
    let p = chain.providers();
    assert_eq!(p[0].stats.count(OutcomeKind::NotFound), 1);
    assert_eq!(p[1].stats.count(OutcomeKind::Hit), 1);

    // Served from the primary when it has the chunk: no failover counted.
    nodes[0].put(&c.key(), &c.stored).await;
    let served = chain.fetch_chunk(&c.info).await.unwrap();
    assert_eq!(served.provider, 0);
    assert_eq!(labels(&served.attempts), ["hit"]);
    assert_eq!(chain.stats.failovers.load(Relaxed), 1);
}

/// Primary has the chunk but answers with `fault`; the secondary has it intact. Returns the
/// primary's outcome after checking the chunk was served, correctly, by the secondary.
async fn primary_fault(fault: Fault) -> Outcome {
    let (nodes, chain) = chain_of(2);
    let c = random_chunk(2, 40_000);
    for n in &nodes {
        n.put(&c.key(), &c.stored).await;
    }
    nodes[0].fault.add("", fault.clone(), None);
    let start = Instant::now();
    let served = chain
        .fetch_chunk(&c.info)
        .await
        .unwrap_or_else(|e| panic!("{fault:?}: {e}"));
    assert!(
        start.elapsed() < TIMEOUT * 10,
        "{fault:?}: took {:?}",
        start.elapsed()
    );
    assert_eq!(served.value.data().as_ref(), c.raw.as_slice(), "{fault:?}");
    assert_eq!(served.provider, 1, "{fault:?}");
    assert_eq!(served.attempts.len(), 2, "{fault:?}");
    assert_eq!(served.attempts[1].outcome, Outcome::Hit, "{fault:?}");
    assert_eq!(chain.stats.failovers.load(Relaxed), 1, "{fault:?}");
    served.attempts[0].outcome.clone()
}

#[tokio::test]
async fn error_on_primary_is_unavailable_and_fails_over() {
    match primary_fault(Fault::Error).await {
        Outcome::Unavailable(why) => assert!(why.contains("503"), "{why}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn truncated_body_on_primary_is_short_and_fails_over() {
    match primary_fault(Fault::Truncate).await {
        Outcome::Short { got, want } => {
            assert!(want > 0);
            assert_eq!(got, want / 2);
        }
        other => panic!("expected Short, got {other:?}"),
    }
}

#[tokio::test]
async fn flipped_bytes_on_primary_are_corrupt_and_fail_over() {
    let outcome = primary_fault(Fault::FlipBytes).await;
    assert!(matches!(outcome, Outcome::Corrupt(_)), "{outcome:?}");
}

#[tokio::test]
async fn empty_body_on_primary_is_short_and_fails_over() {
    match primary_fault(Fault::EmptyBody).await {
        Outcome::Short { got, want } => {
            assert_eq!(got, 0);
            assert!(want > 0);
        }
        other => panic!("expected Short, got {other:?}"),
    }
}

#[tokio::test]
async fn hang_on_primary_times_out_and_fails_over() {
    let outcome = primary_fault(Fault::Hang).await;
    assert_eq!(outcome, Outcome::Timeout(TIMEOUT));
}

#[tokio::test]
async fn delay_past_the_timeout_on_primary_times_out_and_fails_over() {
    let outcome = primary_fault(Fault::Delay(TIMEOUT * 3)).await;
    assert_eq!(outcome, Outcome::Timeout(TIMEOUT));
}

#[tokio::test]
async fn delay_within_the_timeout_is_a_hit() {
    let (nodes, chain) = chain_of(2);
    let c = random_chunk(3, 10_000);
    nodes[0].put(&c.key(), &c.stored).await;
    nodes[0]
        .fault
        .add("", Fault::Delay(Duration::from_millis(20)), None);
    let served = chain.fetch_chunk(&c.info).await.unwrap();
    assert_eq!(served.provider, 0);
    assert_eq!(served.value.data().as_ref(), c.raw.as_slice());
}

// ---------------------------------------------------------------------------------------------
// Every provider misses
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn all_miss_names_every_provider_and_its_outcome() {
    let nodes: Vec<Node> = (0..4).map(|_| Node::new()).collect();
    let names = [
        "gs://primary/ws",
        "s3://secondary/ws",
        "file:///third",
        "http://fourth",
    ];
    let chain = Chain::new(
        nodes
            .iter()
            .zip(names)
            .map(|(n, name)| n.provider(name))
            .collect(),
    );
    let c = random_chunk(4, 20_000);
    for (i, n) in nodes.iter().enumerate() {
        if i != 2 {
            n.put(&c.key(), &c.stored).await;
        }
    }
    nodes[0].fault.add("", Fault::Error, None);
    nodes[1].fault.add("", Fault::Hang, None);
    nodes[3].fault.add("", Fault::FlipBytes, None);

    let err: AllMissed = match chain.fetch_chunk(&c.info).await {
        Ok(s) => panic!(
            "served {} bytes from provider {}",
            s.value.len(),
            s.provider
        ),
        Err(e) => e,
    };
    assert_eq!(
        labels(&err.attempts),
        ["unavailable", "timeout", "not_found", "corrupt"]
    );
    assert!(!err.all_not_found());
    let msg = err.to_string();
    assert!(msg.contains(&c.info.hash.short()), "{msg}");
    assert!(msg.contains("missed on every provider"), "{msg}");
    for part in [
        "gs://primary/ws: unavailable (",
        "s3://secondary/ws: timed out after 0.3s",
        "file:///third: not found",
        "http://fourth: corrupt (",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }
    assert_eq!(chain.stats.all_missed.load(Relaxed), 1);
    assert_eq!(chain.stats.failovers.load(Relaxed), 0);
}

#[tokio::test]
async fn all_not_found_is_reported_as_such() {
    let (_nodes, chain) = chain_of(3);
    let c = random_chunk(5, 100);
    let err = chain
        .fetch_chunk(&c.info)
        .await
        .err()
        .expect("nothing stored");
    assert!(err.all_not_found());
    assert_eq!(labels(&err.attempts), ["not_found"; 3]);
    let msg = err.to_string();
    for p in ["p0: not found", "p1: not found", "p2: not found"] {
        assert!(msg.contains(p), "{msg}");
    }
}

#[tokio::test]
async fn empty_chain_misses() {
    let chain = Chain::new(vec![]);
    let c = random_chunk(6, 100);
    let err = chain
        .fetch_chunk(&c.info)
        .await
        .err()
        .expect("no providers");
    assert!(err.to_string().contains("no providers configured"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// No path returns Ok with wrong, short or empty bytes
// ---------------------------------------------------------------------------------------------

/// What one provider holds for the chunk under its key, and how it answers.
#[derive(Clone, Debug)]
enum Holds {
    /// The right stored bytes, answered normally.
    Good,
    /// The right stored bytes, answered after a delay within the timeout.
    GoodSlow,
    /// Nothing under the key.
    Missing,
    /// The right stored bytes, but reads suffer this fault.
    Faulty(Fault),
    /// Another chunk's stored bytes (same raw and stored length, different content).
    OtherChunk,
    /// The right data with one byte changed, compressed (same stored length: only the hash differs).
    OneByteChanged,
    /// The right stored bytes with one byte flipped in the middle.
    StoredByteFlipped,
    /// The right stored bytes minus the last byte.
    StoredPrefix,
    /// The right stored bytes plus one byte.
    StoredPlusOne,
    /// An empty object.
    EmptyObject,
    /// The right data minus its last byte, compressed.
    RawPrefix,
}

impl Holds {
    fn all() -> Vec<Holds> {
        vec![
            Holds::Good,
            Holds::GoodSlow,
            Holds::Missing,
            Holds::Faulty(Fault::NotFound),
            Holds::Faulty(Fault::Error),
            Holds::Faulty(Fault::Truncate),
            Holds::Faulty(Fault::FlipBytes),
            Holds::Faulty(Fault::EmptyBody),
            Holds::Faulty(Fault::Hang),
            Holds::Faulty(Fault::Delay(TIMEOUT * 2)),
            Holds::OtherChunk,
            Holds::OneByteChanged,
            Holds::StoredByteFlipped,
            Holds::StoredPrefix,
            Holds::StoredPlusOne,
            Holds::EmptyObject,
            Holds::RawPrefix,
        ]
    }

    fn serves(&self) -> bool {
        matches!(self, Holds::Good | Holds::GoodSlow)
    }

    /// The outcome label the chain must record for a provider in this state.
    fn label(&self) -> &'static str {
        match self {
            Holds::Good | Holds::GoodSlow => "hit",
            Holds::Missing | Holds::Faulty(Fault::NotFound) => "not_found",
            Holds::Faulty(Fault::Error) => "unavailable",
            Holds::Faulty(Fault::Hang) | Holds::Faulty(Fault::Delay(_)) => "timeout",
            Holds::Faulty(Fault::Truncate)
            | Holds::Faulty(Fault::EmptyBody)
            | Holds::StoredPrefix
            | Holds::EmptyObject => "short",
            Holds::Faulty(Fault::FlipBytes)
            | Holds::OtherChunk
            | Holds::OneByteChanged
            | Holds::StoredByteFlipped
            | Holds::StoredPlusOne => "corrupt",
            // Decompresses to one byte fewer than raw_len.
            Holds::RawPrefix => "short",
        }
    }
}

struct Variants {
    right: Chunk,
    other: Chunk,
    one_byte_changed: Vec<u8>,
    raw_prefix: Vec<u8>,
}

fn variants() -> Variants {
    let right = random_chunk(100, 3000);
    let other = random_chunk(101, 3000);
    let mut changed = right.raw.clone();
    changed[1500] ^= 0x40;
    let one_byte_changed = compress(&changed).unwrap();
    let raw_prefix = compress(&right.raw[..right.raw.len() - 1]).unwrap();
    // The interesting wrong answers are exactly as long as the right one, so only the
    // decompression and the hash check can tell them apart.
    assert_eq!(other.stored.len(), right.stored.len());
    assert_eq!(one_byte_changed.len(), right.stored.len());
    Variants {
        right,
        other,
        one_byte_changed,
        raw_prefix,
    }
}

async fn set_up(node: &Node, holds: &Holds, v: &Variants) {
    let key = v.right.key();
    let stored = &v.right.stored;
    match holds {
        Holds::Good => node.put(&key, stored).await,
        Holds::GoodSlow => {
            node.put(&key, stored).await;
            node.fault
                .add("", Fault::Delay(Duration::from_millis(10)), None);
        }
        Holds::Missing => {}
        Holds::Faulty(f) => {
            node.put(&key, stored).await;
            node.fault.add("", f.clone(), None);
        }
        Holds::OtherChunk => node.put(&key, &v.other.stored).await,
        Holds::OneByteChanged => node.put(&key, &v.one_byte_changed).await,
        Holds::StoredByteFlipped => {
            let mut b = stored.clone();
            let mid = b.len() / 2;
            b[mid] ^= 0x01;
            node.put(&key, &b).await;
        }
        Holds::StoredPrefix => node.put(&key, &stored[..stored.len() - 1]).await,
        Holds::StoredPlusOne => {
            let mut b = stored.clone();
            b.push(0);
            node.put(&key, &b).await;
        }
        Holds::EmptyObject => node.put(&key, b"").await,
        Holds::RawPrefix => node.put(&key, &v.raw_prefix).await,
    }
}

/// Runs one combination and checks it; returns whether the chunk was served.
async fn run_combo(combo: Vec<Holds>, v: Arc<Variants>) -> bool {
    let (nodes, chain) = chain_of(combo.len());
    for (node, holds) in nodes.iter().zip(&combo) {
        set_up(node, holds, &v).await;
    }
    let first_good = combo.iter().position(Holds::serves);
    match chain.fetch_chunk(&v.right.info).await {
        Ok(served) => {
            // The one property that must never break.
            assert_eq!(
                served.value.data().as_ref(),
                v.right.raw.as_slice(),
                "{combo:?}: served wrong bytes"
            );
            assert_eq!(served.value.len(), v.right.raw.len(), "{combo:?}");
            assert_eq!(
                Some(served.provider),
                first_good,
                "{combo:?}: served by the wrong provider"
            );
            let want: Vec<&str> = combo[..=served.provider].iter().map(Holds::label).collect();
            assert_eq!(labels(&served.attempts), want, "{combo:?}");
            true
        }
        Err(e) => {
            assert_eq!(
                first_good, None,
                "{combo:?}: missed although a provider had it: {e}"
            );
            let want: Vec<&str> = combo.iter().map(Holds::label).collect();
            assert_eq!(labels(&e.attempts), want, "{combo:?}: {e}");
            assert_eq!(
                e.all_not_found(),
                combo.iter().all(|h| h.label() == "not_found"),
                "{combo:?}"
            );
            let msg = e.to_string();
            for i in 0..combo.len() {
                assert!(msg.contains(&format!("p{i}: ")), "{combo:?}: {msg}");
            }
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_path_returns_ok_with_wrong_short_or_empty_bytes() {
    let v = Arc::new(variants());
    let all = Holds::all();
    let mut combos: Vec<Vec<Holds>> = Vec::new();
    for a in &all {
        combos.push(vec![a.clone()]);
        for b in &all {
            combos.push(vec![a.clone(), b.clone()]);
            for c in &all {
                combos.push(vec![a.clone(), b.clone(), c.clone()]);
            }
        }
    }
    let total = combos.len();
    let start = Instant::now();
    // All combinations run concurrently (each has its own stores and chain), so the timeouts
    // overlap instead of adding up.
    let handles: Vec<_> = combos
        .into_iter()
        .map(|combo| tokio::spawn(run_combo(combo, v.clone())))
        .collect();
    let mut served = 0;
    for h in handles {
        if h.await.unwrap() {
            served += 1;
        }
    }
    let n = all.len();
    let good = all.iter().filter(|h| h.serves()).count();
    let bad = n - good;
    assert_eq!(total, n + n * n + n * n * n);
    assert_eq!(
        served,
        total - (bad + bad * bad + bad * bad * bad),
        "served exactly the combinations with a good provider"
    );
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn wrong_content_on_every_provider_never_verifies() {
    // Each provider holds a differently wrong body under the right key.
    let v = variants();
    let (nodes, chain) = chain_of(5);
    let wrong = [
        Holds::OtherChunk,
        Holds::OneByteChanged,
        Holds::StoredByteFlipped,
        Holds::StoredPrefix,
        Holds::RawPrefix,
    ];
    for (n, h) in nodes.iter().zip(&wrong) {
        set_up(n, h, &v).await;
    }
    let err = chain
        .fetch_chunk(&v.right.info)
        .await
        .err()
        .expect("no provider is right");
    assert_eq!(
        labels(&err.attempts),
        ["corrupt", "corrupt", "corrupt", "short", "short"]
    );
    let msg = err.to_string();
    assert!(msg.contains("hash"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// VerifiedChunk::from_stored
// ---------------------------------------------------------------------------------------------

#[test]
fn verified_chunk_rejects_a_short_body() {
    let c = random_chunk(7, 5000);
    let n = c.stored.len();
    match VerifiedChunk::from_stored(&c.info, &c.stored[..n - 1]) {
        Err(Outcome::Short { got, want }) => assert_eq!((got, want), (n as u64 - 1, n as u64)),
        other => panic!("expected Short, got {other:?}"),
    }
    match VerifiedChunk::from_stored(&c.info, b"") {
        Err(Outcome::Short { got: 0, .. }) => {}
        other => panic!("expected Short, got {other:?}"),
    }
}

#[test]
fn verified_chunk_rejects_a_long_body() {
    let c = random_chunk(8, 5000);
    let mut long = c.stored.clone();
    long.push(0);
    match VerifiedChunk::from_stored(&c.info, &long) {
        Err(Outcome::Corrupt(why)) => assert!(why.contains("bytes where"), "{why}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// zstd-compresses `len` zero bytes through the streaming encoder, with or without the content
/// size in the frame header, without ever holding the raw bytes.
fn zero_bomb(len: usize, with_size: bool) -> Vec<u8> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    if with_size {
        enc.include_contentsize(true).unwrap();
        enc.set_pledged_src_size(Some(len as u64)).unwrap();
    } else {
        enc.include_contentsize(false).unwrap();
    }
    let block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len());
        enc.write_all(&block[..n]).unwrap();
        left -= n;
    }
    enc.finish().unwrap()
}

#[test]
fn verified_chunk_rejects_a_decompression_bomb_without_unbounded_allocation() {
    let raw_len = 1 << 20;
    for with_size in [true, false] {
        let bomb = zero_bomb(64 << 20, with_size);
        assert!(bomb.len() < 1 << 20, "bomb is {} bytes", bomb.len());
        let info = ChunkInfo {
            hash: Digest::of(&vec![0u8; raw_len]),
            raw_len: raw_len as u32,
            stored_len: bomb.len() as u32,
        };
        let (r, peak) = peak_alloc(|| VerifiedChunk::from_stored(&info, &bomb));
        match r {
            Err(Outcome::Corrupt(why)) => assert!(why.contains("decompress"), "{why}"),
            other => panic!("with_size={with_size}: expected Corrupt, got {other:?}"),
        }
        assert!(
            peak <= 2 * raw_len,
            "with_size={with_size}: allocated {peak} bytes at once for a {raw_len}-byte chunk"
        );
    }
}

#[test]
fn verified_chunk_rejects_right_length_wrong_hash() {
    let c = random_chunk(9, 5000);
    let other = random_chunk(10, 5000);
    assert_eq!(c.stored.len(), other.stored.len());
    match VerifiedChunk::from_stored(&c.info, &other.stored) {
        Err(Outcome::Corrupt(why)) => {
            assert!(why.contains("hash"), "{why}");
            assert!(why.contains(&c.info.hash.short()), "{why}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // The raw-bytes check used for the disk cache rejects the same way.
    match VerifiedChunk::from_raw(&c.info, Bytes::from(other.raw.clone())) {
        Err(Outcome::Corrupt(why)) => assert!(why.contains("hash"), "{why}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn verified_chunk_rejects_bodies_that_are_not_zstd_or_inflate_to_the_wrong_length() {
    let c = random_chunk(11, 5000);
    let garbage = random_bytes(12, c.stored.len());
    assert!(matches!(
        VerifiedChunk::from_stored(&c.info, &garbage),
        Err(Outcome::Corrupt(_))
    ));
    // A valid frame, as long as the stored length, that inflates to one byte less than raw_len.
    let shorter = compress(&c.raw[..c.raw.len() - 1]).unwrap();
    let info = ChunkInfo {
        stored_len: shorter.len() as u32,
        ..c.info
    };
    match VerifiedChunk::from_stored(&info, &shorter) {
        Err(Outcome::Short { got, want }) => assert_eq!(got + 1, want),
        other => panic!("expected Short, got {other:?}"),
    }
    // One byte more than raw_len: the bounded decompression refuses it.
    let longer = compress(&[c.raw.as_slice(), b"x"].concat()).unwrap();
    let info = ChunkInfo {
        stored_len: longer.len() as u32,
        ..c.info
    };
    assert!(matches!(
        VerifiedChunk::from_stored(&info, &longer),
        Err(Outcome::Corrupt(_))
    ));
    // from_raw: short and long raw bodies.
    assert!(matches!(
        VerifiedChunk::from_raw(&c.info, Bytes::from(c.raw[..10].to_vec())),
        Err(Outcome::Short { got: 10, .. })
    ));
    assert!(matches!(
        VerifiedChunk::from_raw(&c.info, Bytes::from([c.raw.as_slice(), b"x"].concat())),
        Err(Outcome::Corrupt(_))
    ));
    // And the right bytes pass.
    let v = VerifiedChunk::from_stored(&c.info, &c.stored).unwrap();
    assert_eq!(v.data().as_ref(), c.raw.as_slice());
}

// ---------------------------------------------------------------------------------------------
// Circuit breaker
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hanging_primary_is_skipped_after_three_timeouts() {
    let (nodes, chain) = chain_of(2);
    let chunks: Vec<Chunk> = (0..10).map(|i| random_chunk(200 + i, 2000)).collect();
    for c in &chunks {
        nodes[0].put(&c.key(), &c.stored).await;
        nodes[1].put(&c.key(), &c.stored).await;
    }
    nodes[0].fault.add("", Fault::Hang, None);

    let start = Instant::now();
    let mut after_third = start;
    for (i, c) in chunks.iter().enumerate() {
        let s = chain.fetch_chunk(&c.info).await.unwrap();
        assert_eq!(s.provider, 1);
        assert_eq!(s.value.data().as_ref(), c.raw.as_slice());
        if i < 3 {
            assert_eq!(labels(&s.attempts), ["timeout", "hit"], "fetch {i}");
        } else {
            assert_eq!(labels(&s.attempts), ["skipped", "hit"], "fetch {i}");
        }
        if i == 2 {
            after_third = Instant::now();
        }
    }
    // Without the breaker the 10 fetches would take 10 timeouts; with it, about 3.
    let total = start.elapsed();
    assert!(total < TIMEOUT * 6, "10 fetches took {total:?}");
    let rest = after_third.elapsed();
    assert!(
        rest < TIMEOUT * 2,
        "7 fetches past an open breaker took {rest:?}"
    );
    // The skipped provider was not even asked.
    assert_eq!(nodes[0].fault.gets(), 3);
    let p0 = &chain.providers()[0];
    assert_eq!(p0.breaker.state(), State::Open);
    assert_eq!(p0.stats.count(OutcomeKind::Timeout), 3);
    assert_eq!(p0.stats.count(OutcomeKind::Skipped), 7);
    assert_eq!(chain.stats.failovers.load(Relaxed), 10);
}

#[tokio::test]
async fn skipped_provider_is_tried_as_a_last_resort() {
    let (nodes, chain) = chain_of(2);
    let common = random_chunk(300, 2000);
    let only_primary = random_chunk(301, 2000);
    for n in &nodes {
        n.put(&common.key(), &common.stored).await;
    }
    nodes[0]
        .put(&only_primary.key(), &only_primary.stored)
        .await;

    // Three consecutive failures open the primary's breaker.
    nodes[0].fault.add("", Fault::Hang, Some(3));
    for _ in 0..3 {
        let s = chain.fetch_chunk(&common.info).await.unwrap();
        assert_eq!(s.provider, 1);
    }
    let p0 = &chain.providers()[0];
    assert_eq!(p0.breaker.state(), State::Open);
    assert_eq!(nodes[0].fault.gets(), 3);

    // Now only the primary has the chunk: it is skipped first, then asked as the last resort.
    let s = chain.fetch_chunk(&only_primary.info).await.unwrap();
    assert_eq!(s.provider, 0);
    assert_eq!(s.value.data().as_ref(), only_primary.raw.as_slice());
    assert_eq!(labels(&s.attempts), ["skipped", "not_found", "hit"]);
    assert_eq!(nodes[0].fault.gets(), 4);
    // A healthy answer closes the breaker: the primary is asked first again.
    assert_eq!(p0.breaker.state(), State::Closed);
    let s = chain.fetch_chunk(&common.info).await.unwrap();
    assert_eq!((s.provider, labels(&s.attempts)), (0, vec!["hit"]));
}

#[tokio::test]
async fn last_resort_failure_reports_the_real_outcome() {
    let (nodes, chain) = chain_of(2);
    let c = random_chunk(302, 2000);
    nodes[0].put(&c.key(), &c.stored).await;
    nodes[0].fault.add("", Fault::Error, None);
    // Open the breaker with three errors (the secondary does not have the chunk either).
    for _ in 0..3 {
        let e = chain.fetch_chunk(&c.info).await.err().unwrap();
        assert_eq!(labels(&e.attempts), ["unavailable", "not_found"]);
    }
    assert_eq!(chain.providers()[0].breaker.state(), State::Open);
    let gets = nodes[0].fault.gets();
    let e = chain.fetch_chunk(&c.info).await.err().unwrap();
    // Skipped, then asked last: the error shows what it answered, once per provider.
    assert_eq!(nodes[0].fault.gets(), gets + 1);
    assert_eq!(labels(&e.attempts), ["unavailable", "not_found"]);
    assert!(!e.all_not_found());
    let msg = e.to_string();
    assert!(msg.contains("p0: unavailable"), "{msg}");
    assert!(!msg.contains("skipped"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Layer resolution
// ---------------------------------------------------------------------------------------------

/// A small layer: its manifest, the manifest's encoding and digest.
fn build_layer(ws: &str, layer: &str, seed: u64) -> (Manifest, Vec<u8>, Digest) {
    let mut b = LayerBuilder::new();
    let mut stored = Vec::new();
    let mut sink = |c: NewChunk| -> Result<(), std::io::Error> {
        stored.push((c.index, compress(&c.raw)?.len() as u32));
        Ok(())
    };
    b.add_dir(Meta {
        path: b"src".to_vec(),
        mode: 0o755,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 0,
    });
    let content = random_bytes(seed, 5000);
    b.add_file(
        Meta {
            path: b"src/main.rs".to_vec(),
            mode: 0o644,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 1,
        },
        content.len() as u64,
        &content[..],
        &mut sink,
    )
    .unwrap();
    b.flush(&mut sink).unwrap();
    for (i, len) in stored {
        b.set_stored(i, len, Vec::new());
    }
    let m = b.finish(ws.into(), layer.into(), vec![], 1_700_000_000);
    let bytes = encode(&m).unwrap();
    let d = Digest::of(&bytes);
    (m, bytes, d)
}

#[tokio::test]
async fn resolve_layer_finds_ref_and_manifest_on_the_secondary() {
    let (nodes, chain) = chain_of(2);
    let (m, bytes, d) = build_layer("ws1", "build", 400);
    nodes[1].put(&keys::manifest(&d), &bytes).await;
    nodes[1]
        .put(
            &keys::layer_ref("ws1", "build"),
            &LayerRef::new(d, 1234).to_bytes(),
        )
        .await;
    let r = chain.resolve_layer("ws1", "build").await.unwrap();
    assert_eq!(r.digest, d);
    assert_eq!(r.manifest.into_manifest().unwrap(), m);
    assert_eq!(r.created, 1234);
    assert_eq!(
        chain.stats.failovers.load(Relaxed),
        2,
        "ref and manifest both failed over"
    );
}

#[tokio::test]
async fn an_empty_ref_is_short_not_corrupt_and_a_later_provider_serves_it() {
    let (nodes, chain) = chain_of(2);
    let (m, bytes, d) = build_layer("ws1", "build", 404);
    nodes[0].put(&keys::layer_ref("ws1", "build"), b"").await;
    // Only the primary has the layer, and its ref is empty: missing (exit 3), not damaged.
    let Err(e) = chain.resolve_layer("ws1", "build").await else {
        panic!("an empty ref resolved");
    };
    assert_eq!(labels(&e.attempts), ["short", "not_found"], "{e}");
    assert_eq!(wsfs::error::WsfsError::from_missed(&e).exit_code(), 3);
    // The secondary has it: served after the primary's empty body.
    for n in &nodes {
        n.put(&keys::manifest(&d), &bytes).await;
    }
    nodes[1]
        .put(
            &keys::layer_ref("ws1", "build"),
            &LayerRef::new(d, 7).to_bytes(),
        )
        .await;
    let r = chain.resolve_layer("ws1", "build").await.unwrap();
    assert_eq!(r.manifest.into_manifest().unwrap(), m);
    assert_eq!(r.created, 7);
}

#[tokio::test]
async fn resolve_layer_follows_a_ref_to_a_manifest_on_another_provider() {
    let (nodes, chain) = chain_of(3);
    let (m, bytes, d) = build_layer("ws1", "test", 401);
    nodes[0]
        .put(
            &keys::layer_ref("ws1", "test"),
            &LayerRef::new(d, 1).to_bytes(),
        )
        .await;
    nodes[2].put(&keys::manifest(&d), &bytes).await;
    let r = chain.resolve_layer("ws1", "test").await.unwrap();
    assert_eq!(r.manifest.into_manifest().unwrap(), m);
}

#[tokio::test]
async fn resolve_layer_rejects_a_manifest_that_does_not_match_its_digest() {
    let (nodes, chain) = chain_of(2);
    let (_, _, d) = build_layer("ws1", "build", 402);
    // Another valid manifest of the same layer, stored under the first one's address.
    let (_, other_bytes, other_d) = build_layer("ws1", "build", 403);
    assert_ne!(d, other_d);
    for n in &nodes {
        n.put(&keys::manifest(&d), &other_bytes).await;
        n.put(
            &keys::layer_ref("ws1", "build"),
            &LayerRef::new(d, 0).to_bytes(),
        )
        .await;
    }
    let e = chain
        .resolve_layer("ws1", "build")
        .await
        .err()
        .expect("must not resolve");
    assert_eq!(labels(&e.attempts), ["corrupt", "corrupt"]);
    assert!(!e.all_not_found());
    let msg = e.to_string();
    assert!(msg.contains("corrupt"), "{msg}");
    assert!(msg.contains("manifest"), "{msg}");
    assert!(msg.contains("build"), "{msg}");
}

#[tokio::test]
async fn resolve_layer_rejects_a_ref_to_another_layers_manifest() {
    let (nodes, chain) = chain_of(1);
    let (_, bytes, d) = build_layer("ws1", "other", 404);
    nodes[0].put(&keys::manifest(&d), &bytes).await;
    nodes[0]
        .put(
            &keys::layer_ref("ws1", "build"),
            &LayerRef::new(d, 0).to_bytes(),
        )
        .await;
    let e = chain
        .resolve_layer("ws1", "build")
        .await
        .err()
        .expect("must not resolve");
    let msg = e.to_string();
    assert!(msg.contains("corrupt"), "{msg}");
    assert!(msg.contains("\"other\""), "{msg}");
}

#[tokio::test]
async fn resolve_layer_rejects_a_garbage_ref() {
    let (nodes, chain) = chain_of(2);
    nodes[0]
        .put(&keys::layer_ref("ws1", "build"), b"not json")
        .await;
    nodes[1]
        .put(
            &keys::layer_ref("ws1", "build"),
            br#"{"manifest":"zz","created":0}"#,
        )
        .await;
    let e = chain
        .resolve_layer("ws1", "build")
        .await
        .err()
        .expect("must not resolve");
    assert_eq!(labels(&e.attempts), ["corrupt", "corrupt"]);
    assert!(e.to_string().contains("not a digest"), "{e}");
}

#[tokio::test]
async fn resolve_layer_missing_everywhere_is_all_not_found() {
    let (_nodes, chain) = chain_of(2);
    let e = chain
        .resolve_layer("ws1", "build")
        .await
        .err()
        .expect("nothing stored");
    assert!(e.all_not_found());
    assert_eq!(labels(&e.attempts), ["not_found", "not_found"]);
    let msg = e.to_string();
    assert!(
        msg.contains("\"build\"") && msg.contains("\"ws1\""),
        "{msg}"
    );
}

#[tokio::test]
async fn resolve_layer_with_manifest_missing_everywhere_fails() {
    let (nodes, chain) = chain_of(2);
    let (_, _, d) = build_layer("ws1", "build", 405);
    nodes[0]
        .put(
            &keys::layer_ref("ws1", "build"),
            &LayerRef::new(d, 0).to_bytes(),
        )
        .await;
    let e = chain
        .resolve_layer("ws1", "build")
        .await
        .err()
        .expect("no manifest");
    // Store 1's ref was unusable (its manifest is nowhere), so store 2's ref was tried: none.
    assert_eq!(labels(&e.attempts), ["unavailable", "not_found"], "{e}");
    assert!(
        e.to_string().contains(&format!("manifest {}", d.short())),
        "{e}"
    );
    // Nothing damaged: a missing layer (exit 3), not an integrity failure.
    assert_eq!(wsfs::error::WsfsError::from_missed(&e).exit_code(), 3);
}

// ---------------------------------------------------------------------------------------------
// Repair on read
// ---------------------------------------------------------------------------------------------

/// Polls `node` for `key` for up to 2 s.
async fn wait_for(node: &Node, key: &str) -> Option<Bytes> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(b) = node.get(key).await {
            return Some(b);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_writes_a_missing_chunk_back_to_the_primary() {
    let (nodes, mut chain) = chain_of(2);
    chain.enable_repair();
    let c = random_chunk(500, 30_000);
    nodes[1].put(&c.key(), &c.stored).await;

    let s = chain.fetch_chunk(&c.info).await.unwrap();
    assert_eq!(s.provider, 1);
    let repaired = wait_for(&nodes[0], &c.key())
        .await
        .expect("chunk was not repaired on the primary within 2 s");
    assert_eq!(repaired.as_ref(), c.stored.as_slice());
    let deadline = Instant::now() + Duration::from_secs(2);
    while chain.stats.repairs.load(Relaxed) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(chain.stats.repairs.load(Relaxed), 1);

    // The primary now serves it.
    let s = chain.fetch_chunk(&c.info).await.unwrap();
    assert_eq!(s.provider, 0);
    assert_eq!(s.value.data().as_ref(), c.raw.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_replaces_a_corrupt_chunk_on_the_primary() {
    let (nodes, mut chain) = chain_of(2);
    chain.enable_repair();
    let c = random_chunk(501, 30_000);
    let mut bad = c.stored.clone();
    bad[100] ^= 0xff;
    nodes[0].put(&c.key(), &bad).await;
    nodes[1].put(&c.key(), &c.stored).await;

    let s = chain.fetch_chunk(&c.info).await.unwrap();
    assert_eq!(s.provider, 1);
    assert_eq!(labels(&s.attempts), ["corrupt", "hit"]);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = nodes[0].get(&c.key()).await.unwrap();
        if now.as_ref() == c.stored.as_slice() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "corrupt chunk was not repaired within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = chain.fetch_chunk(&c.info).await.unwrap();
    assert_eq!(s.provider, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_does_not_copy_a_layer_ref_to_a_provider_without_the_layer() {
    // A layer ref's presence on a provider promises the manifest and every chunk are there
    // (it is written last by persist). Repair-on-read must not break that promise by copying
    // the ref to a provider that has none of the layer's chunks.
    let (nodes, mut chain) = chain_of(2);
    chain.enable_repair();
    let (_, bytes, d) = build_layer("ws1", "build", 600);
    let ref_key = keys::layer_ref("ws1", "build");
    nodes[1].put(&keys::manifest(&d), &bytes).await;
    nodes[1]
        .put(&ref_key, &LayerRef::new(d, 0).to_bytes())
        .await;

    chain.resolve_layer("ws1", "build").await.unwrap();
    // Give the repair task time to run (repairs of the chunk and manifest keys are harmless).
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        assert!(
            nodes[0].get(&ref_key).await.is_none(),
            "the layer ref was repaired onto a provider that lacks the layer's chunks"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn manifest_decode_allocation_is_proportional_to_the_manifest() {
    let (_, bytes, _) = build_layer("ws1", "build", 700);
    let (r, peak) = peak_alloc(|| wsfs::manifest::decode(&bytes));
    r.unwrap();
    assert!(
        peak < 16 << 20,
        "decoding a {}-byte manifest allocated {peak} bytes at once",
        bytes.len()
    );
}

/// A chunk stored under its key with another valid encoding (another zstd level, so another
/// stored length than the manifest records) is still the chunk: it verifies by hash and is served.
#[tokio::test]
async fn a_valid_re_encoding_of_a_chunk_is_accepted() {
    use object_store::ObjectStore as _;
    let raw: Vec<u8> = (0..300_000u32)
        .map(|i| (i % 251) as u8 ^ (i >> 11) as u8)
        .collect();
    let hash = wsfs::manifest::Digest::of(&raw);
    let original = wsfs::manifest::chunker::compress(&raw).unwrap();
    let info = wsfs::manifest::ChunkInfo {
        hash,
        raw_len: raw.len() as u32,
        stored_len: original.len() as u32,
    };
    let other = zstd::bulk::compress(&raw, 19).unwrap();
    assert_ne!(
        other.len(),
        original.len(),
        "the test needs a different encoding"
    );
    let mem = Arc::new(object_store::memory::InMemory::new());
    mem.put(
        &object_store::path::Path::from(wsfs::manifest::keys::chunk(&hash).as_str()),
        other.into(),
    )
    .await
    .unwrap();
    let chain = Chain::new(vec![Provider::from_store("mem", mem, limits())]);
    let served = chain.fetch_chunk(&info).await.expect("served");
    assert!(served.value.data()[..] == raw[..]);
}
