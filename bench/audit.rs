//! The audit log of a run: mutating requests counted per side and per user.

use std::{collections::BTreeMap, fs, path::Path};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::*;

// ---- the audit log ----------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct SideAudit {
    /// The controller's mutating requests, by "verb resource[/subresource]".
    pub(crate) controller: BTreeMap<String, u64>,
    /// The controller's requests answered with an error, by "code verb resource[/subresource]".
    pub(crate) controller_errors: BTreeMap<String, u64>,
    /// Every client's mutating requests in the side's namespace, by user.
    pub(crate) by_user: BTreeMap<String, u64>,
}

impl SideAudit {
    pub(crate) fn sum(&self, pred: impl Fn(&str) -> bool) -> u64 {
        self.controller.iter().filter(|(k, _)| pred(k)).map(|(_, v)| v).sum()
    }
    pub(crate) fn is_event(key: &str) -> bool {
        key.split(' ').nth(1).is_some_and(|r| r == "events" || r.starts_with("events."))
    }
    pub(crate) fn mutating(&self) -> u64 {
        self.sum(|k| !Self::is_event(k))
    }
    pub(crate) fn events(&self) -> u64 {
        self.sum(Self::is_event)
    }
    pub(crate) fn status_writes(&self) -> u64 {
        self.sum(|k| k.ends_with("jobs/status") || k.ends_with("backgroundjobs/status"))
    }
}

pub(crate) struct AuditLine {
    pub(crate) user: String,
    pub(crate) key: String,
    pub(crate) namespace: String,
    pub(crate) code: i64,
}

pub(crate) fn read_audit(path: &Path) -> Res<Vec<AuditLine>> {
    let text = fs::read_to_string(path)?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        if v["stage"] != "ResponseComplete" {
            continue;
        }
        let r = &v["objectRef"];
        let group = r["apiGroup"].as_str().unwrap_or("");
        let mut resource = r["resource"].as_str().unwrap_or("?").to_string();
        if !group.is_empty() && resource == "events" {
            resource = format!("events.{group}");
        }
        if let Some(sub) = r["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        out.push(AuditLine {
            user: v["user"]["username"].as_str().unwrap_or("?").to_string(),
            key: format!("{} {resource}", v["verb"].as_str().unwrap_or("?")),
            namespace: r["namespace"].as_str().unwrap_or("").to_string(),
            code: v["responseStatus"]["code"].as_i64().unwrap_or(0),
        });
    }
    Ok(out)
}

pub(crate) fn side_audit(lines: &[AuditLine], side: Side) -> SideAudit {
    let mut a = SideAudit::default();
    for l in lines {
        let in_ns = l.namespace == side.namespace();
        let mine = l.user == side.user() && (side != Side::Raw || in_ns);
        if mine {
            *a.controller.entry(l.key.clone()).or_default() += 1;
            if !(200..300).contains(&l.code) {
                *a.controller_errors.entry(format!("{} {}", l.code, l.key)).or_default() += 1;
            }
        }
        if in_ns {
            *a.by_user.entry(l.user.clone()).or_default() += 1;
        }
    }
    a
}
