//! `wsfs gc` as a person reads it: per store, what was kept, what went (or would go, in a dry
//! run) and why. (`--json` prints the same [`StoreGc`] values as JSON.)

use super::gc::StoreGc;

/// The per-store summary as text.
pub fn render(stores: &[StoreGc]) -> String {
    let mut s = String::new();
    for g in stores {
        s.push_str(&format!(
            "{}: {}{}\n",
            g.store,
            g.status,
            g.reason
                .as_ref()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default()
        ));
        let verb = if g.status == "dry-run" {
            "would delete"
        } else {
            "deleted"
        };
        s.push_str(&format!(
            "  refs: {} kept, {} expired{}\n",
            g.refs_kept,
            g.refs_expired.len(),
            if g.refs_expired.is_empty() {
                String::new()
            } else {
                format!(" ({})", g.refs_expired.join(", "))
            }
        ));
        if !g.workspaces_leased.is_empty() {
            s.push_str(&format!(
                "  kept because mounted (live lease): {}\n",
                g.workspaces_leased.join(", ")
            ));
        }
        for (what, c) in [("manifests", &g.manifests), ("chunks", &g.chunks)] {
            s.push_str(&format!(
                "  {what}: {} kept ({} bytes), {verb} {} ({} bytes), {} unreached but younger than the grace period\n",
                c.kept, c.kept_bytes, c.deleted, c.deleted_bytes, c.spared_young
            ));
        }
        if g.leases_removed > 0 || g.upload_leftovers_removed > 0 {
            s.push_str(&format!(
                "  expired leases {verb}: {}; upload leftovers deleted: {}\n",
                g.leases_removed, g.upload_leftovers_removed
            ));
        }
        for e in &g.errors {
            s.push_str(&format!("  NOTE: {e}\n"));
        }
    }
    s
}
