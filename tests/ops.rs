//! Operations: stuck-mount recovery in bounded time, status counters. (What a dead daemon leaves
//! behind is tested in lifecycle.rs.)

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn setup(s: &Scratch) -> std::path::PathBuf {
    let src = s.path("src");
    make_tree(&src, 50, 3, 11);
    assert_ok(&persist(s, &[s.store("s1")], "ws", "l1", &src, &[]));
    src
}

/// Waits until process `pid` sleeps waiting for a FUSE answer (`/proc/PID/wchan`; where the
/// kernel hides it, inside a syscall, per `/proc/PID/syscall`).
fn wait_blocked_on_fuse(pid: i32) {
    let t = Instant::now();
    loop {
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        let hidden = wchan.trim().is_empty() || wchan.trim() == "0";
        // A read that the kernel turned into readahead waits for the page the FUSE reply
        // would fill (`folio_wait_bit_common`, older kernels `wait_on_page_bit_common`).
        if wchan.contains("request_wait_answer")
            || wchan.contains("fuse")
            || wchan.contains("folio_wait")
            || wchan.contains("wait_on_page")
            || (hidden && !syscall.starts_with("running") && !syscall.is_empty())
        {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the reader never blocked on the frozen daemon (wchan {wchan:?}, syscall {syscall:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn force_umount_frees_a_frozen_daemon_with_a_blocked_reader() {
    require_fuse();
    let s = Scratch::new();
    setup(&s);
    let mp = s.mkdir("mnt");
    let m = mount(&s, &[s.store("s1")], "ws", &["l1"], &mp, &[]);
    let pid = m.pid().unwrap();
    // SAFETY: stopping our own test daemon.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let copy = s.path("copy.bin");
    let mut reader = Command::new("cat")
        .arg(mp.join("big.bin"))
        .stdout(std::fs::File::create(&copy).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_blocked_on_fuse(reader.id() as i32);
    assert!(
        reader.try_wait().unwrap().is_none(),
        "the reader is blocked on the frozen daemon"
    );
    let t = Instant::now();
    let o = s.wsfs(&[
        "umount",
        "--force",
        "--timeout",
        "10s",
        mp.to_str().unwrap(),
    ]);
    let took = t.elapsed();
    assert_ok(&o);
    assert!(
        took < Duration::from_secs(12),
        "force umount returned within its timeout (took {took:?})"
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("connection aborted: yes") || out.contains("clean unmount: yes"),
        "{out}"
    );
    // Words for people, not Rust debug text (`daemon_stopped=Some(true)`, `state Some('T')`).
    let said = format!("{out}{}", String::from_utf8_lossy(&o.stderr));
    for debug in ["Some(", "None", "Ok(", "Err("] {
        assert!(!said.contains(debug), "{debug} in: {said}");
    }
    // The reader does not hang: it fails loudly, or (when the polite unmount went through while
    // its request was in flight and the resumed daemon answered it) it has the file's exact
    // bytes. Never a short, empty or different file.
    let t = Instant::now();
    let status = loop {
        if let Some(st) = reader.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "reader still blocked after force umount"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = reader.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let context = format!(
        "umount said: {out}\n{}; reader stderr: {err}; daemon log: {}",
        String::from_utf8_lossy(&o.stderr),
        s.daemon_logs()
    );
    if status.success() {
        let want = std::fs::read(s.path("src").join("big.bin")).unwrap();
        assert!(
            std::fs::read(&copy).unwrap() == want,
            "a reader that succeeded has exactly the file's bytes; {context}"
        );
    } else {
        assert!(
            ["not connected", "connection abort", "Input/output error"]
                .iter()
                .any(|m| err.contains(m)),
            "a reader that failed failed loudly (ENOTCONN/ECONNABORTED/EIO); {context}"
        );
    }
    assert!(!is_mounted(&mp), "mount gone");
    let t = Instant::now();
    while wsfs::ops::linux::process::pid_alive(pid) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!wsfs::ops::linux::process::pid_alive(pid), "no daemon left");
}

#[test]
fn status_counters_agree_with_the_reads() {
    require_fuse();
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = Rng::new(8).bytes(3 << 20);
    std::fs::write(src.join("a.bin"), &data).unwrap();
    std::fs::write(src.join("gone.txt"), b"will be missing").unwrap();
    assert_ok(&persist(
        &s,
        &[s.store("s1"), s.store("s2")],
        "ws",
        "l1",
        &src,
        &[],
    ));
    // Every chunk missing on the primary; the small file's pack missing everywhere.
    let pack = first_chunk_of(&s.path("s1"), "gone.txt");
    remove_chunks(&s.path("s1"));
    std::fs::remove_file(s.path("s2").join(wsfs::manifest::keys::chunk(&pack))).unwrap();
    let mp = s.mkdir("mnt");
    let _m = mount(&s, &[s.store("s1"), s.store("s2")], "ws", &["l1"], &mp, &[]);
    assert!(std::fs::read(mp.join("a.bin")).unwrap() == data);
    assert!(std::fs::read(mp.join("gone.txt")).is_err());
    let o = s.wsfs(&["status", mp.to_str().unwrap(), "--json"]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = &v["mounts"][0];
    assert_eq!(m["bytes_served"].as_u64(), Some(data.len() as u64), "{m}");
    let chunks_of_a = m["stores"][1]["served"].as_u64().unwrap();
    assert!(chunks_of_a >= 1);
    assert_eq!(m["failovers"].as_u64(), Some(chunks_of_a), "{m}");
    assert!(m["eio"].as_u64().unwrap() >= 1, "{m}");
    assert_eq!(m["failures"][0]["path"].as_str(), Some("gone.txt"), "{m}");
    assert_eq!(
        m["failures"][0]["chunk"].as_str(),
        Some(pack.to_hex().as_str()),
        "{m}"
    );
    assert_eq!(m["pid"].as_i64().map(|p| p as i32), _m.pid());
    // The text form carries the same ledger, and the warm-up of the default `--prefetch tree`.
    let t = s.wsfs(&["status", mp.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&t.stdout);
    assert!(out.contains("EIO gone.txt"), "{}", text(&t));
    assert!(out.contains("  warm-up: "), "{}", text(&t));
}
