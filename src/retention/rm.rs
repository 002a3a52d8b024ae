//! `wsfs rm`: removes layer refs (a whole workspace's, or the named layers'), on every store.
//! Only refs: what they named is collected later by `wsfs gc`, once nothing else reaches it.
//! A mount in progress keeps working (it pinned its manifests, and its lease keeps them).

use super::inventory;
use crate::error::WsfsError;
use crate::manifest::names::validate_name;
use crate::store::{Outcome, Provider};
use std::collections::BTreeSet;
use std::sync::Arc;

pub struct RmReport {
    /// Per store: the refs removed (`ws/layer`), and errors.
    pub stores: Vec<(String, Vec<String>, Vec<String>)>,
}

impl RmReport {
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (store, removed, errors) in &self.stores {
            s.push_str(&format!(
                "{store}: {} ref(s) removed{}\n",
                removed.len(),
                if removed.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", removed.join(", "))
                }
            ));
            for e in errors {
                s.push_str(&format!("  ERROR: {e}\n"));
            }
        }
        s
    }
}

pub async fn rm(
    providers: &[Arc<Provider>],
    workspace: &str,
    layers: &[String],
) -> Result<RmReport, WsfsError> {
    validate_name("workspace", workspace).map_err(WsfsError::Usage)?;
    for l in layers {
        validate_name("layer", l).map_err(WsfsError::Usage)?;
    }
    let mut report = RmReport { stores: Vec::new() };
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut failed = false;
    for p in providers {
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        match inventory(p, Some(workspace)).await {
            Ok(inv) => {
                for r in inv
                    .refs
                    .iter()
                    .filter(|r| layers.is_empty() || layers.contains(&r.layer))
                {
                    match p.delete(&r.key).await {
                        Ok(()) | Err(Outcome::NotFound) => {
                            seen.insert(r.layer.clone());
                            removed.push(format!("{}/{}", r.workspace, r.layer));
                        }
                        Err(o) => {
                            failed = true;
                            errors.push(format!("{}: {o}", r.key));
                        }
                    }
                }
            }
            Err(o) => {
                failed = true;
                errors.push(format!("cannot list: {o}"));
            }
        }
        report.stores.push((p.name.clone(), removed, errors));
    }
    if failed {
        return Err(WsfsError::Failed(format!(
            "some refs could not be removed\n{}",
            report.render()
        )));
    }
    let missing: Vec<&String> = layers.iter().filter(|l| !seen.contains(*l)).collect();
    if (layers.is_empty() && seen.is_empty()) || !missing.is_empty() {
        return Err(WsfsError::Missing(format!(
            "nothing to remove: {} on no store\n{}",
            if layers.is_empty() {
                format!("workspace {workspace:?} has no layers")
            } else {
                format!(
                    "layer(s) {} of workspace {workspace:?}",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            report.render()
        )));
    }
    Ok(report)
}
