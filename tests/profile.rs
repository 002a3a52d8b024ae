//! Profile-guided prefetch (`--profile NAME`): a mount records the order in which the job's
//! reads first touch chunks and stores it at unmount; the next mount with that name (a new
//! workspace sharing chunks) fetches those chunks first; damaged, foreign and missing profiles
//! cost nothing and change no read.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wsfs::manifest::Digest;
use wsfs::ops::service::control::{MountStatus, ProfileStatus};

/// Five files of 200 KiB (one chunk each, below the CDC minimum) and some small ones.
fn tree(s: &Scratch) -> PathBuf {
    let src = s.path("src");
    std::fs::create_dir_all(src.join("small")).unwrap();
    let mut rng = Rng::new(42);
    for name in ["a", "b", "c", "d", "e"] {
        std::fs::write(src.join(name), rng.bytes(200 << 10)).unwrap();
    }
    for i in 0..20 {
        std::fs::write(src.join(format!("small/{i}")), rng.bytes(100)).unwrap();
    }
    src
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn stored_profile(store: &Path, name: &str) -> Vec<Digest> {
    let bytes = std::fs::read(store.join("profiles").join(name)).expect("profile stored");
    wsfs::profile::decode(&bytes).expect("a valid profile")
}

/// Waits until the replay has dealt with every chunk it matched; returns the status.
fn replay_done(s: &Scratch, mp: &Path) -> (MountStatus, ProfileStatus) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = mount_status(s, mp);
        let p = st
            .profile
            .clone()
            .expect("a mount with --profile reports it");
        // `listed` is set when the stored profile has been read (0 when there is none).
        let settled = p.replayed == p.matched && (p.listed > 0 || st.uptime_secs >= 2);
        if settled {
            return (st, p);
        }
        assert!(Instant::now() < deadline, "replay did not finish: {st:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_profile_is_recorded_in_read_order_and_replayed_by_the_next_workspace() {
    require_fuse();
    let s = Scratch::new();
    let src = tree(&s);
    let store = s.store("st");
    assert_ok(&persist(
        &s,
        std::slice::from_ref(&store),
        "run1",
        "build",
        &src,
        &[],
    ));
    let chunk = |f: &str| first_chunk_of(&s.path("st"), f);

    // Run 1: no profile yet; reads c, a, e (and c again).
    let mp = s.mkdir("mnt1");
    let m = mount(
        &s,
        std::slice::from_ref(&store),
        "run1",
        &["build"],
        &mp,
        &["--profile", "job", "--prefetch", "none"],
    );
    let (st, p) = replay_done(&s, &mp);
    assert_eq!(p.listed, 0, "no stored profile yet: {st:?}");
    for f in ["c", "a", "e", "c"] {
        assert_eq!(read(&mp.join(f)), read(&src.join(f)));
    }
    let st = mount_status(&s, &mp);
    // (Each 200 KiB chunk is one frame: recorded as the chunk.)
    assert_eq!(st.profile.as_ref().map(|p| p.recorded), Some(3), "{st:?}");
    let o = s.wsfs(&["umount", mp.to_str().unwrap()]);
    assert_ok(&o);
    drop(m);
    assert_eq!(
        stored_profile(&s.path("st"), "job"),
        vec![chunk("c"), chunk("a"), chunk("e")],
        "first reads, in order, once each"
    );

    // Run 2: the next commit's workspace (same files, so the same chunks), no cache shared.
    assert_ok(&persist(
        &s,
        std::slice::from_ref(&store),
        "run2",
        "build",
        &src,
        &[],
    ));
    let mp2 = s.mkdir("mnt2");
    let _m2 = mount(
        &s,
        std::slice::from_ref(&store),
        "run2",
        &["build"],
        &mp2,
        &[
            "--profile",
            "job",
            "--prefetch",
            "none",
            "--metrics-file",
            s.path("m.prom").to_str().unwrap(),
        ],
    );
    let (st, p) = replay_done(&s, &mp2);
    assert_eq!((p.listed, p.matched), (3, 3), "{st:?}");
    assert_eq!(
        st.cache.fetched, 3,
        "the profile's chunks, fetched ahead: {st:?}"
    );
    assert_eq!(st.reads, 0, "before any read: {st:?}");
    // The job's reads find them in the cache: every one is a memory hit, none waits on a fetch
    // (what reads start for the files after them, the pack read-ahead, comes on top).
    for f in ["c", "a", "e"] {
        let hits = mount_status(&s, &mp2).cache.memory_hits;
        assert_eq!(read(&mp2.join(f)), read(&src.join(f)));
        let st = mount_status(&s, &mp2);
        assert!(st.cache.memory_hits > hits, "{f}: {st:?}");
    }
    // Prometheus shows the replay.
    let want = "state=\"replayed\"} 3";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(s.path("m.prom"))
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.starts_with("wsfs_profile_chunks{")
                && l.contains("profile=\"job\"")
                && l.ends_with(want)
        })
    {
        assert!(
            Instant::now() < deadline,
            "no wsfs_profile_chunks replayed 3 in the metrics file"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A file outside the profile reads as usual.
    assert_eq!(read(&mp2.join("b")), read(&src.join("b")));
}

#[test]
fn damaged_foreign_and_missing_profiles_cost_nothing() {
    require_fuse();
    let s = Scratch::new();
    let src = tree(&s);
    let (s1, s2) = (s.store("s1"), s.store("s2"));
    assert_ok(&persist(
        &s,
        &[s1.clone(), s2.clone()],
        "ws",
        "build",
        &src,
        &[],
    ));
    let chunk = |f: &str| first_chunk_of(&s.path("s1"), f);
    let write_profile = |store: &str, name: &str, bytes: &[u8]| {
        let d = s.path(store).join("profiles");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    };
    // "damaged": garbage on s1, a good profile (d) on s2: the good copy is used (failover).
    write_profile("s1", "damaged", b"not a profile at all");
    write_profile("s2", "damaged", &wsfs::profile::encode(&[chunk("d")]));
    // "flipped": a good profile with one bit changed, on both stores: ignored.
    let mut flipped = wsfs::profile::encode(&[chunk("a"), chunk("b")]);
    flipped[14] ^= 0x40;
    write_profile("s1", "flipped", &flipped);
    write_profile("s2", "flipped", &flipped);
    // "foreign": another workspace's chunks only.
    let foreign = [Digest([7; 32]), Digest([9; 32])];
    write_profile("s1", "foreign", &wsfs::profile::encode(&foreign));

    for (name, listed, matched) in [
        ("damaged", 1, 1),
        ("flipped", 0, 0),
        ("foreign", 2, 0),
        ("never-stored", 0, 0),
    ] {
        let mp = s.mkdir(&format!("mnt-{name}"));
        let m = mount(
            &s,
            &[s1.clone(), s2.clone()],
            "ws",
            &["build"],
            &mp,
            &["--profile", name, "--prefetch", "none"],
        );
        let (st, p) = replay_done(&s, &mp);
        assert_eq!((p.listed, p.matched), (listed, matched), "{name}: {st:?}");
        assert_eq!(st.cache.fetched, matched, "{name}: {st:?}");
        // Every read is right whatever the profile said.
        compare_trees(&src, &mp);
        let o = s.wsfs(&["umount", mp.to_str().unwrap()]);
        assert_ok(&o);
        drop(m);
        // The run's reads replaced the useless profile with a good one on every store.
        for store in ["s1", "s2"] {
            let got = stored_profile(&s.path(store), name);
            assert_eq!(got.len(), 6, "{name} on {store}: every chunk was read once");
        }
    }
    let log = s.daemon_logs();
    assert!(
        log.contains("the stored profile cannot be used"),
        "a damaged profile is reported: {log}"
    );

    // Bad names are refused before anything starts.
    let mp = s.mkdir("mnt-bad");
    let o = mount_cmd(&s, &[s1], "ws", &["build"], &mp, &["--profile", "a/b"]);
    assert_code(&o, 2);
    assert!(text(&o).contains("profile"), "{}", text(&o));
}
