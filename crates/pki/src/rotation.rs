//! A CA rotation without downtime, in three steps, each applied to every
//! node before the next begins:
//!
//! 1. [`Step::Trust`]: a new CA is created beside the current one; every
//!    trust bundle (the CA's `.crt` files on the nodes, the kubeconfigs'
//!    `certificate-authority-data`) holds both, and the current CA still
//!    signs.
//! 2. [`Step::Reissue`]: the new CA signs: every leaf of the CA is
//!    reissued from it; the bundles still hold both, so a component not
//!    yet restarted and one already restarted trust each other.
//! 3. [`Step::Drop`]: the old CA leaves the bundles.
//!
//! The step under way is recorded in `<state>/pki/rotation.toml`, with
//! whether it reached every node; `reconcile` renders that step until
//! the next one is asked for, so `apply` in between changes nothing. The
//! new CA waits in `<stem>.next.crt`/`.key` during step 1; from step 2 on
//! it is the CA (`<stem>.crt`/`.key`, the old pair kept as `.bak` files)
//! and the old certificate stays trusted as `<stem>.previous.crt` until
//! step 3 removes it.

use crate::catalog::CaId;
use crate::PkiError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// The steps of a rotation, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Trust,
    Reissue,
    Drop,
}

impl Step {
    pub const ALL: [Step; 3] = [Step::Trust, Step::Reissue, Step::Drop];

    /// 1, 2 or 3.
    pub fn number(self) -> u8 {
        match self {
            Step::Trust => 1,
            Step::Reissue => 2,
            Step::Drop => 3,
        }
    }

    pub fn from_number(n: u8) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.number() == n)
    }

    pub fn next(self) -> Option<Step> {
        Step::from_number(self.number() + 1)
    }

    /// What the step does, for a plan's title.
    pub fn what(self, ca: CaId) -> String {
        match self {
            Step::Trust => format!(
                "a new {ca} is created; every trust bundle of the {} CA (its ca.crt files, kubeconfigs' certificate-authority-data, client CA flags) holds the old and the new one; the old one still signs",
                ca.name()
            ),
            Step::Reissue => format!(
                "the new {ca} signs: every certificate it issues is reissued from it and rolled out; the bundles still hold both CAs"
            ),
            Step::Drop => format!(
                "the old {ca} leaves every trust bundle; a certificate it signed is no longer accepted"
            ),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Step::Trust => "trust the new CA beside the old one",
            Step::Reissue => "reissue every certificate from the new CA",
            Step::Drop => "drop the old CA",
        };
        write!(f, "step {} of 3 ({name})", self.number())
    }
}

/// A rotation as recorded in the state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub ca: CaId,
    pub step: Step,
    /// The step reached every node.
    pub done: bool,
}

/// Its file in the state directory's `pki/`.
pub const FILE: &str = "rotation.toml";

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("pki").join(FILE)
}

/// The rotation recorded in the state directory, if one is under way.
pub fn recorded(state_dir: &Path) -> Result<Option<Rotation>, PkiError> {
    let p = path(state_dir);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PkiError::Io { path: p, source }),
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| PkiError::Rotation {
            path: p,
            detail: format!(
                "does not parse: {e}\n  help: it records the step of a CA rotation; restore it from a backup of the state directory"
            ),
        })
}

/// Records that `rotation`'s step reached every node (the last step
/// ends the rotation: the record goes).
pub fn finish_step(state_dir: &Path, rotation: Rotation) -> Result<(), PkiError> {
    if rotation.step == Step::Drop {
        let p = path(state_dir);
        return match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(PkiError::Io { path: p, source }),
        };
    }
    write(
        state_dir,
        Rotation {
            done: true,
            ..rotation
        },
    )
}

pub(crate) fn text(rotation: &Rotation) -> String {
    format!(
        "# A CA rotation under way (kubeforge certs renew --new-ca): its step,\n# and whether it reached every node.\n{}",
        toml::to_string(rotation).unwrap_or_default()
    )
}

fn write(state_dir: &Path, rotation: Rotation) -> Result<(), PkiError> {
    crate::write_atomic(&path(state_dir), text(&rotation).as_bytes(), 0o644)
}

/// The step `kubeforge certs renew --new-ca CA` runs next: the recorded
/// one again until it reached every node, then the one after it; a
/// rotation of another CA under way, or a `wanted` step that is not the
/// next one, is refused.
pub fn next_step(
    recorded: Option<Rotation>,
    ca: CaId,
    wanted: Option<Step>,
) -> Result<Rotation, String> {
    let next = match recorded {
        None => Step::Trust,
        Some(r) if r.ca != ca => {
            return Err(format!(
                "a rotation of the {} is under way ({} {}): finish it first (kubeforge certs renew --new-ca {})",
                r.ca,
                r.step,
                if r.done { "done" } else { "not finished" },
                r.ca.name()
            ))
        }
        Some(r) if !r.done => r.step,
        Some(r) => match r.step.next() {
            Some(s) => s,
            None => Step::Trust,
        },
    };
    if let Some(w) = wanted {
        if w != next {
            let why = match recorded {
                Some(r) if r.ca == ca && !r.done && w > r.step => format!(
                    "{} has not reached every node yet: run it again first",
                    r.step
                ),
                Some(r) if r.ca == ca && w > next => {
                    format!("{} comes first (steps are never skipped)", next)
                }
                None if w > next => "no rotation is under way: it starts with step 1".to_string(),
                _ => format!("{w} is done already; the next one is {next}"),
            };
            return Err(format!(
                "refusing step {} of the {} rotation: {why}",
                w.number(),
                ca
            ));
        }
    }
    Ok(Rotation {
        ca,
        step: next,
        done: false,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(step: Step, done: bool) -> Option<Rotation> {
        Some(Rotation {
            ca: CaId::Kubernetes,
            step,
            done,
        })
    }

    #[test]
    fn the_next_step_never_skips_one() {
        let k = CaId::Kubernetes;
        let next = |rec, wanted| next_step(rec, k, wanted).map(|r| r.step);
        // (recorded, wanted) -> the step run, or the refusal's words.
        type Case = (Option<Rotation>, Option<Step>, Result<Step, &'static str>);
        let cases: [Case; 12] = [
            (None, None, Ok(Step::Trust)),
            (None, Some(Step::Trust), Ok(Step::Trust)),
            (None, Some(Step::Reissue), Err("it starts with step 1")),
            (at(Step::Trust, false), None, Ok(Step::Trust)),
            (
                at(Step::Trust, false),
                Some(Step::Reissue),
                Err("has not reached every node yet"),
            ),
            (at(Step::Trust, true), None, Ok(Step::Reissue)),
            (
                at(Step::Trust, true),
                Some(Step::Drop),
                Err("step 2 of 3 (reissue every certificate from the new CA) comes first"),
            ),
            (
                at(Step::Trust, true),
                Some(Step::Trust),
                Err("is done already"),
            ),
            (at(Step::Reissue, false), None, Ok(Step::Reissue)),
            (at(Step::Reissue, true), None, Ok(Step::Drop)),
            (at(Step::Drop, false), Some(Step::Drop), Ok(Step::Drop)),
            // A finished rotation leaves no record; one marked done at its
            // last step starts over.
            (at(Step::Drop, true), None, Ok(Step::Trust)),
        ];
        for (rec, wanted, want) in cases {
            match (next(rec, wanted), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{rec:?} {wanted:?}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{rec:?} {wanted:?}: {e}"),
                (got, w) => panic!("{rec:?} {wanted:?}: {got:?}, want {w:?}"),
            }
        }
        let other = next_step(at(Step::Reissue, true), CaId::Etcd, None).unwrap_err();
        assert!(
            other.contains("a rotation of the kubernetes CA is under way"),
            "{other}"
        );
    }

    #[test]
    fn recorded_finished_and_gone() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recorded(dir.path()).unwrap(), None);
        let r = Rotation {
            ca: CaId::FrontProxy,
            step: Step::Trust,
            done: false,
        };
        write(dir.path(), r).unwrap();
        assert_eq!(recorded(dir.path()).unwrap(), Some(r));
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert!(text.contains("ca = \"front-proxy\""), "{text}");
        assert!(text.contains("step = \"trust\""), "{text}");
        finish_step(dir.path(), r).unwrap();
        assert!(recorded(dir.path()).unwrap().unwrap().done);
        finish_step(
            dir.path(),
            Rotation {
                step: Step::Drop,
                ..r
            },
        )
        .unwrap();
        assert_eq!(recorded(dir.path()).unwrap(), None);
        std::fs::write(path(dir.path()), "ca = 3").unwrap();
        let e = recorded(dir.path()).unwrap_err().to_string();
        assert!(e.contains("does not parse"), "{e}");
    }
}
