//! Every fact about a node in one round trip: the host itself
//! ([`ops::host_script`]), mode, owner and sha256 of every managed file (with the
//! old text of changed files that may be shown as a diff), the state of
//! every unit, and whether each preparation step's read-only check passes.
//!
//! Hashing every file on every run is what a no-op re-run would spend most
//! of its time on (binaries are hundreds of megabytes per node), so the
//! node keeps a cache of sha256 sums keyed by size, change time (ctime,
//! which no program can set) and inode: a file whose key is unchanged is
//! not read again. Only a run that may write (`record`) refreshes the
//! cache; `plan` only reads it.

use crate::ops::{self, HostFacts};
use crate::{Script, Transport, TransportError};
use std::collections::BTreeMap;
use std::time::Duration;

/// Where the node keeps its sha256 cache.
pub const CACHE: &str = "/var/lib/kubeforge/sha256-cache";

/// What to gather from one node.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Each managed file with the sha256 it should have and whether its old
    /// text may be shown (text files without secrets).
    pub files: Vec<(String, String, bool)>,
    pub units: Vec<String>,
    /// The preparation steps' read-only checks.
    pub checks: Vec<Check>,
    /// Units whose running binary's `--version` is read (the first line).
    pub versions: Vec<String>,
    /// Read-only shell run after the host facts script, in the same
    /// section: its `unmet=VALUE` lines are the host's `unmet`.
    pub host_extra: String,
    /// The sha256 cache file on the node.
    pub cache: String,
    /// Refresh the cache with what was hashed (a run holding the apply
    /// lock); otherwise it is only read.
    pub record: bool,
    /// A small file read whole when it is there (the node's record of
    /// what kubeforge placed on it).
    pub manifest: Option<String>,
    /// Files whose certificate blocks are read (never anything else of
    /// them: a kubelet's client certificate file holds its key too).
    pub certificates: Vec<String>,
}

/// A preparation step's read-only check (exits 0 when nothing needs
/// doing).
#[derive(Debug, Clone, Default)]
pub struct Check {
    pub name: String,
    pub script: String,
    /// Read-only; prints, on one line, what the check's answer depends on,
    /// or nothing when it cannot vouch for it. A check that passed in a
    /// run that records is not run again while its key prints the same:
    /// the node keeps the keys of the checks that passed (`check-cache`,
    /// beside the sha256 cache), each with a sum of the check's and the
    /// key's script, so a changed check is run again.
    pub key: Option<String>,
}

/// A file as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub mode: u32,
    pub owner: String,
    pub sha256: String,
    /// Its text, when asked for and it differs from what it should be.
    pub content: Option<Vec<u8>>,
}

/// Everything gathered from a node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub host: HostFacts,
    /// Present regular files; a missing path is absent.
    pub files: BTreeMap<String, Found>,
    /// Unit -> (active, enabled).
    pub units: BTreeMap<String, ops::UnitState>,
    /// The steps whose check passed.
    pub checks_passed: Vec<String>,
    /// Unit -> the first line its running binary's `--version` prints.
    pub versions: BTreeMap<String, String>,
    /// Files whose sha256 came from the cache (not read again).
    pub cached: usize,
    /// The content of the request's `manifest`, when it is a file.
    pub manifest: Option<Vec<u8>>,
    /// The certificate blocks of each of the request's `certificates`
    /// that holds any (PEM text).
    pub certificates: BTreeMap<String, String>,
}

/// Reads its request on stdin: `F DIFF SHA PATH`, `U UNIT`, `V UNIT` and
/// `P PATH` lines, then the checks (see [`checks`]) and the extra host checks, one
/// `X LINE` and `E LINE` per line of script, all split into files by one
/// `awk` (a shell's `read` takes a pipe a byte at a time, and the checks
/// grow with the cluster: the hosts and routes of every node). $1 is the
/// cache file, $2 `record` or `read`, $3 the manifest file (or empty).
/// Prints the host facts as `H key=value`, then `F MODE OWNER SHA PATH`,
/// `C PATH BASE64` (old text of a changed diffable file), `U UNIT ACTIVE
/// ENABLED`, `S INDEX STATUS`, `V UNIT LINE`, `K COUNT` (sums taken from
/// the cache), `M BASE64` (the manifest, when it is a file) and `P INDEX
/// LINE` (each line of the certificate blocks of the INDEX-th `P` path,
/// counted from 1).
///
/// A `V` unit's version is what its running process's own binary
/// (`/proc/PID/exe`, also when the file was replaced since) says to
/// `--version`, run under the unit's name; the answers are kept next to
/// the sha256 cache (`version-cache`), keyed by that binary's device,
/// inode, size and change time, so that a binary is asked once.
const GATHER: &str = r#"set -u
cache="$1"; mode="$2"; manifest="${3:-}"
d=$(mktemp -d /run/kubeforge-gather.XXXXXX) || exit 1
trap 'rm -rf "$d"' EXIT
trap 'rm -rf "$d"; exit 1' HUP INT TERM PIPE
# The request, split by one awk: req.f ("DIFF SHA PATH"), paths, req.u,
# req.v, checks, extra; and the units (each once, those asked for their
# state and their version).
: > "$d/req.f"; : > "$d/paths"; : > "$d/req.u"; : > "$d/req.v"; : > "$d/checks"; : > "$d/extra"; : > "$d/certs"
units=$(awk -v d="$d" '
  function unit(u) { if (!(u in seen)) { seen[u] = 1; printf " %s", u } }
  { tag = substr($0, 1, 2); r = substr($0, 3) }
  tag == "F " { print r > (d "/req.f"); sub(/^[^ ]* [^ ]* /, "", r); print r > (d "/paths"); next }
  tag == "U " { print r > (d "/req.u"); unit(r); next }
  tag == "V " { print r > (d "/req.v"); unit(r); next }
  tag == "X " { print r > (d "/checks"); next }
  tag == "E " { print r > (d "/extra"); next }
  tag == "P " { print r > (d "/certs"); next }') || exit 1
units="$units "
# A node kubeforge installed (it holds the manifest) had its NTP state
# checked then: timedatectl, which starts timedated, is not asked again.
# mf: the manifest, when it is a file (read by the units' awk below).
mf=
if [ -n "$manifest" ] && [ -f "$manifest" ]; then mf=$manifest; fi
ntp_known=; [ -n "$mf" ] && ntp_known=yes
# Written to a file, printed as H lines by the units' awk.
( set +u; HOST_FACTS
  if [ -s "$d/extra" ]; then . "$d/extra"; fi ) > "$d/host" 2>/dev/null
# Type, mode, owner, size, ctime, inode and path of every managed file
# (tab-separated); only regular files count. The temporary directory's
# first: its change time, that of the file stat writes to, is the node's
# clock (the host facts' `time`, printed by the units' awk; no `date`).
set --
while IFS= read -r p; do set -- "$@" "$p"; done < "$d/paths"
stat -L -c '%F	%a	%U:%G	%s	%.9Z	%i	%n' -- "$d" "$@" > "$d/stat" 2>/dev/null
set --
known_sums="$cache"
[ -r "$known_sums" ] || known_sums=/dev/null
# The sha256 cache ("SIZE CTIME INODE SHA PATH" lines): a file whose
# size, ctime and inode are those cached keeps its cached sum.
read_cache='BEGIN { FS = "\t"; while ((getline l < cache) > 0) { lines++; split(l, c, " "); p = substr(l, length(c[1] c[2] c[3] c[4]) + 5); key[p] = c[1] " " c[2] " " c[3]; csum[p] = c[4] } }
function regular() { return $1 == "regular file" || $1 == "regular empty file" }
function hit() { return ($7 in key) && key[$7] == $4 " " $5 " " $6 }'
# F lines, K (sums from the cache), the changed diffable files, and with
# `record` the new cache, written only when it differs from the old one:
# printed by one awk when every sum is known (the cache's, or those in
# hashed). When some are not (with `tohash`), it prints nothing but their
# paths and total size; the rest is hashed in one go, by the program
# big_sums picks for that size ("PATH\tSUM" lines), and the same awk runs
# again with those sums (a file gone meanwhile is left out).
new_cache=
[ "$mode" = record ] && new_cache="$d/cache.new"
summed='FILENAME == ARGV[1] { hashed[$1] = $2; next }
  FILENAME == ARGV[2] {
    if (!regular()) next
    if ($7 in hashed) { s = hashed[$7]; fresh++ }
    else if (hit()) { s = csum[$7]; hits++ }
    else { if (tohash != "") { print $7 > tohash; bytes += $4; misses++ }; next }
    sum[$7] = s; nf++
    fl[nf] = "F " $2 " " $3 " " s " " $7
    cl[nf] = $4 " " $5 " " $6 " " s " " $7
    next
  }
  { split($0, r, " "); p = substr($0, length(r[1] r[2]) + 3)
    if (r[1] == "1" && (p in sum) && sum[p] != r[2]) ch[++nc] = p }
  END {
    if (misses > 0) { print bytes + 0 > total; exit }
    for (i = 1; i <= nf; i++) { print fl[i]; if (out != "") print cl[i] > out }
    for (i = 1; i <= nc; i++) print ch[i] > changed
    print "K " hits + 0
    if (out != "" && (fresh > 0 || hits != lines)) print "" > (out ".differs")
  }'
: > "$d/hashed"
# $1: where the paths without a known sum go (empty: they are left out).
sums() {
  awk -v cache="$known_sums" -v out="$new_cache" -v changed="$d/changed" -v tohash="$1" -v total="$d/total" "$read_cache$summed" "$d/hashed" "$d/stat" "$d/req.f"
}
sums "$d/tohash"
if [ -s "$d/tohash" ]; then
  read -r bytes < "$d/total"
  if big_sums "$bytes"; then
    tr '\n' '\0' < "$d/tohash" | xargs -0 openssl dgst -sha256 -r 2>/dev/null | awk '{ s = $1; print substr($0, length(s) + 3) "\t" s }' > "$d/hashed"
  else
    tr '\n' '\0' < "$d/tohash" | xargs -0 sha256sum -- 2>/dev/null | sed 's/^\\//' | awk '{ s = $1; sub(/^[^ ]*  /, ""); print $0 "\t" s }' > "$d/hashed"
  fi
  sums ""
fi
if [ -s "$d/changed" ]; then
  while IFS= read -r p; do
    printf 'C %s %s\n' "$p" "$(base64 -w0 < "$p")"
  done < "$d/changed"
fi
if [ -n "$new_cache" ] && [ -f "$new_cache.differs" ]; then
  cdir="${cache%/*}"
  mkdir -p "$cdir"
  t=$(mktemp "$cdir/.sha256-cache.XXXXXX") && cat "$new_cache" > "$t" && mv -f "$t" "$cache"
fi
# Every unit's state, enablement and main PID in one systemctl call (a
# block per unit, in the order asked; none without systemd): U lines, and
# "UNIT PID" of the running ones in pids.
: > "$d/show"; : > "$d/units"
if [ "$units" != " " ]; then
  set -f
  # shellcheck disable=SC2086
  printf '%s\n' $units > "$d/units"
  # shellcheck disable=SC2086
  systemctl show -p ActiveState,UnitFileState,MainPID -- $units > "$d/show" 2>/dev/null || : > "$d/show"
  set +f
fi
# The same awk prints the host facts, the clock and the listening ports (H lines),
# the certificate blocks of the files asked for (their keys stay; P lines
# numbered as asked) and the manifest, read whole: an M line for each of
# its lines and one for what follows its last line break. The listening
# ports only when a unit asked for is not active: the pre-flight looks
# for ports taken only for units about to start, and on a busy node
# /proc/net/tcp is long (the kernel walks every socket to print it).
awk -v unitsf="$d/units" -v showf="$d/show" -v pids="$d/pids" -v certs="$d/certs" -v hostf="$d/host" -v listen="$d/listen" -v statf="$d/stat" -v mf="$mf" 'LISTEN_AWK
  FILENAME == unitsf { n++; name[n] = $0; next }
  FILENAME == showf { i++; for (k = 1; k <= NF; k++) { e = index($k, "="); v[i, substr($k, 1, e - 1)] = substr($k, e + 1) }; next }
  { a = "inactive"; f = "-"
    for (j = 1; j <= n; j++) if (name[j] == $0) {
      if (v[j, "ActiveState"] != "") a = v[j, "ActiveState"]
      if (v[j, "UnitFileState"] != "") f = v[j, "UnitFileState"]
    }
    if (a != "active") starting = 1
    print "U " $0 " " a " " f }
  END {
    while ((getline l < hostf) > 0) print "H " l
    if ((getline l < statf) > 0) { split(l, st, "\t"); if (st[1] == "directory") print "H time=" st[5] }
    if (starting) { listening(); close(listen); while ((getline l < listen) > 0) print "H " l }
    for (j = 1; j <= n; j++) { p = v[j, "MainPID"]; if (p != "" && p != "0") print name[j], p > pids }
    while ((getline cf < certs) > 0) {
      ci++; if (cf in asked) continue; asked[cf] = 1; c = 0
      while ((getline l < cf) > 0) {
        if (l ~ /-----BEGIN CERTIFICATE-----/) c = 1
        if (c) print "P " ci " " l
        if (l ~ /-----END CERTIFICATE-----/) c = 0
      }
      close(cf)
    }
    if (mf != "") {
      RS = "\001"; m = ""
      if ((getline m < mf) >= 0) {
        k = split(m, ml, "\n")
        if (k == 0) print "M "
        for (j = 1; j <= k; j++) print "M " ml[j]
      }
    }
  }
' "$d/units" RS= "$d/show" RS='\n' "$d/req.u"
# The checks; one whose key is the one recorded when it last passed
# passes without being run ("ID KEY" lines in the check cache, rewritten
# by a recording run in which a check with a key was run and passed).
ccache="${cache%/*}/check-cache"
key_ok() { case "$1" in ''|*"
"*) return 1 ;; esac; }
check_cached() {
  key_ok "$2" && [ -r "$ccache" ] || return 1
  while IFS= read -r l; do [ "$l" = "$1 $2" ] && return 0; done < "$ccache"
  return 1
}
: > "$d/ccache.new"
if [ -s "$d/checks" ]; then
  ( set --; . "$d/checks" )
fi
if [ "$mode" = record ] && [ -f "$d/ccache.differs" ]; then
  mkdir -p "${ccache%/*}"
  t=$(mktemp "${ccache%/*}/.check-cache.XXXXXX") && cat "$d/ccache.new" > "$t" && mv -f "$t" "$ccache"
fi
# The running binaries' versions ("KEY LINE" lines in the version cache,
# rewritten when a binary was asked).
vcache="${cache%/*}/version-cache"
asked=
: > "$d/vcache.new"; : > "$d/vpids"; : > "$d/vkeys"
# "UNIT PID" of the units asked that run, in the order asked, and their
# binaries' keys ("/proc/PID/exe KEY") in one stat.
if [ -s "$d/req.v" ] && [ -f "$d/pids" ]; then
  while IFS= read -r u; do
    while read -r n p; do [ "$n" = "$u" ] && printf '%s %s\n' "$u" "$p" >> "$d/vpids" && break; done < "$d/pids"
  done < "$d/req.v"
fi
set --
while read -r u p; do set -- "$@" "/proc/$p/exe"; done < "$d/vpids"
[ "$#" -eq 0 ] || stat -L -c '%n %d:%i:%s:%Z' -- "$@" > "$d/vkeys" 2>/dev/null
while read -r u pid; do
  key=
  while read -r n k; do [ "$n" = "/proc/$pid/exe" ] && key=$k && break; done < "$d/vkeys"
  [ -n "$key" ] || continue
  line=
  if [ -r "$vcache" ]; then
    while IFS= read -r l; do [ "${l%% *}" = "$key" ] && line=${l#* } && break; done < "$vcache"
  fi
  if [ -z "$line" ]; then
    asked=yes
    mkdir -p "$d/v"
    ln -sf "/proc/$pid/exe" "$d/v/$u"
    line=$(timeout 10 "$d/v/$u" --version 2>/dev/null </dev/null | head -n 1)
  fi
  [ -n "$line" ] || continue
  printf 'V %s %s\n' "$u" "$line"
  printf '%s %s\n' "$key" "$line" >> "$d/vcache.new"
done < "$d/vpids"
if [ "$mode" = record ] && [ -n "$asked" ] && [ -s "$d/vcache.new" ]; then
  mkdir -p "${vcache%/*}"
  t=$(mktemp "${vcache%/*}/.version-cache.XXXXXX") && cat "$d/vcache.new" > "$t" && mv -f "$t" "$vcache"
fi
exit 0
"#;

/// The steps' checks as one script for the gather script to source: each
/// in a subshell of its own (its `exit`, variables and `set` stay there,
/// without `-u`), then `S INDEX STATUS`. A fork per check, no new program.
/// A check with a key runs its key first (in a subshell too), and itself
/// only when the check cache does not hold that key for it.
fn checks(checks: &[Check]) -> String {
    use sha2::{Digest, Sha256};
    let mut s = String::new();
    for (i, c) in checks.iter().enumerate() {
        let check = &c.script;
        let run = format!("( set +u\n{check}\n) >/dev/null 2>&1 </dev/null");
        let Some(key) = &c.key else {
            s.push_str(&format!("{run}; echo \"S {i} $?\"\n"));
            continue;
        };
        let sum = Sha256::digest(format!("{check}\0{key}").as_bytes());
        let id: String = sum.iter().take(8).map(|b| format!("{b:02x}")).collect();
        s.push_str(&format!(
            "k=$( ( set +u\n{key}\n) 2>/dev/null </dev/null ) || k=\n\
             if check_cached {id} \"$k\"; then s=0; hit=yes; else {run}; s=$?; hit=; fi\n\
             echo \"S {i} $s\"\n\
             if [ \"$s\" = 0 ] && key_ok \"$k\"; then\n\
             \x20 printf '%s %s\\n' {id} \"$k\" >> \"$d/ccache.new\"\n\
             \x20 [ -n \"$hit\" ] || : > \"$d/ccache.differs\"\n\
             fi\n"
        ));
    }
    s
}

/// The gather script with the host facts script inside.
fn script() -> String {
    format!(
        "{}{}",
        ops::big_sums!(),
        GATHER
            .replace("HOST_FACTS", ops::HOST_BASE)
            .replace("LISTEN_AWK", ops::LISTEN)
    )
}

/// Gathers everything the request names from the node of `t`, read-only
/// (but for the sha256 cache with `record`).
pub async fn gather(t: &dyn Transport, req: &Request) -> Result<Report, TransportError> {
    let mut stdin = String::new();
    for (path, sha, diff) in &req.files {
        stdin.push_str(&format!("F {} {sha} {path}\n", u8::from(*diff)));
    }
    for u in &req.units {
        stdin.push_str(&format!("U {u}\n"));
    }
    for u in &req.versions {
        stdin.push_str(&format!("V {u}\n"));
    }
    for path in &req.certificates {
        stdin.push_str(&format!("P {path}\n"));
    }
    for (tag, text) in [("X", checks(&req.checks)), ("E", req.host_extra.clone())] {
        for line in text.lines() {
            stdin.push_str(&format!("{tag} {line}\n"));
        }
    }
    let body = script();
    let mode = if req.record { "record" } else { "read" };
    let out = t
        .run_ok(
            Script::new("gather facts", &body)
                .args([
                    req.cache.clone(),
                    mode.to_string(),
                    req.manifest.clone().unwrap_or_default(),
                ])
                .stdin(stdin.into_bytes())
                .timeout(Duration::from_secs(600)),
        )
        .await?;
    Ok(parse(&out.stdout_str(), req))
}

fn parse(text: &str, req: &Request) -> Report {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut r = Report::default();
    let mut host = String::new();
    let mut contents: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    let mut manifest: Vec<&str> = Vec::new();
    for line in text.lines() {
        let Some((tag, rest)) = line.split_once(' ') else {
            continue;
        };
        match tag {
            "H" => {
                host.push_str(rest);
                host.push('\n');
            }
            "K" => r.cached = rest.trim().parse().unwrap_or(0),
            "M" => manifest.push(rest),
            "P" => {
                let (i, line) = rest.split_once(' ').unwrap_or((rest, ""));
                let path = i
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| req.certificates.get(i.wrapping_sub(1)));
                if let Some(path) = path {
                    let pem = r.certificates.entry(path.clone()).or_default();
                    pem.push_str(line);
                    pem.push('\n');
                }
            }
            "F" => {
                let mut p = rest.splitn(4, ' ');
                let (Some(mode), Some(owner), Some(sha), Some(path)) =
                    (p.next(), p.next(), p.next(), p.next())
                else {
                    continue;
                };
                let Ok(mode) = u32::from_str_radix(mode, 8) else {
                    continue;
                };
                r.files.insert(
                    path.to_string(),
                    Found {
                        mode,
                        owner: owner.to_string(),
                        sha256: sha.to_string(),
                        content: None,
                    },
                );
            }
            "C" => {
                if let Some((path, data)) = rest.rsplit_once(' ') {
                    if let Ok(bytes) = b64.decode(data) {
                        contents.insert(path, bytes);
                    }
                } else if !rest.is_empty() {
                    // An empty file: no data after the path.
                    contents.insert(rest, Vec::new());
                }
            }
            "U" => {
                let mut p = rest.split_whitespace();
                if let Some(u) = p.next() {
                    r.units.insert(
                        u.to_string(),
                        ops::UnitState {
                            active: p.next() == Some("active"),
                            enabled: p.next() == Some("enabled"),
                        },
                    );
                }
            }
            "V" => {
                if let Some((u, line)) = rest.split_once(' ') {
                    if req.versions.iter().any(|x| x == u) {
                        r.versions.insert(u.to_string(), line.trim().to_string());
                    }
                }
            }
            "S" => {
                let mut p = rest.split_whitespace();
                if let (Some(i), Some("0")) = (p.next(), p.next()) {
                    if let Some(c) = i.parse::<usize>().ok().and_then(|i| req.checks.get(i)) {
                        r.checks_passed.push(c.name.clone());
                    }
                }
            }
            _ => {}
        }
    }
    for (path, bytes) in contents {
        if let Some(f) = r.files.get_mut(path) {
            f.content = Some(bytes);
        }
    }
    r.host = ops::parse_host(&host);
    if !manifest.is_empty() {
        r.manifest = Some(manifest.join("\n").into_bytes());
    }
    r
}
