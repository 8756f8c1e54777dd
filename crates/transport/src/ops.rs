//! Operations built on [`Transport::run`]: each is one shell script with
//! positional arguments, so the same code runs over SSH and locally.

use crate::{Output, Script, Transport, TransportError};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

pub(crate) async fn first_line<R: AsyncRead + Unpin>(
    out: Option<R>,
    timeout: Duration,
) -> Result<String, String> {
    let Some(out) = out else {
        return Err("no stdout".into());
    };
    let mut lines = BufReader::new(out).lines();
    match tokio::time::timeout(timeout, lines.next_line()).await {
        Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(None)) => Err("ended without output".into()),
        Ok(Ok(Some(l))) => Ok(l),
    }
}

/// The end of a script that installed files: when `$c` names the node's
/// sha256 cache (see [`crate::gather`]), the lines `new_lines` (a function
/// the script defines) prints, `SIZE CTIME INODE SHA256 PATH` for each new
/// file, replace those of the same paths, so that the next run need not
/// read the files; a cache that cannot be written is no error.
macro_rules! remember_sums {
    () => {
        r#"if [ -n "$c" ]; then
  {
    cdir=${c%/*}; cdir=${cdir:-/}
    [ -d "$cdir" ] || mkdir -p -- "$cdir"
    umask 077
    exec 8>>"$c.lock"; flock 8
    [ -e "$c" ] || : > "$c"
    # Under the lock, this process's own name for the new cache.
    n="$cdir/.sha256-cache.$$"
    new_lines | awk 'f == 1 { p = substr($0, length($1 $2 $3 $4) + 5); new[p] = 1; e[++k] = $0; next }
      !(substr($0, length($1 $2 $3 $4) + 5) in new) { print }
      END { for (i = 1; i <= k; i++) print e[i] }' f=1 - f=2 "$c" > "$n"
    mv -f -- "$n" "$c"
  } 2>/dev/null || true
fi
"#
    };
}

/// `sum256 SIZE < FILE` prints the lowercase hex sha256 of its stdin, of
/// SIZE bytes: see [`big_sums!`] for the program that hashes it.
macro_rules! sum256 {
    () => {
        concat!(
            $crate::ops::big_sums!(),
            "sum256() { if big_sums \"$1\"; then set -- $(openssl dgst -sha256 -r); else set -- $(sha256sum); fi; echo \"${1:-}\"; }\n"
        )
    };
}
pub(crate) use sum256;

/// `big_sums BYTES` succeeds when BYTES are better hashed by OpenSSL than
/// by coreutils' `sha256sum`: from 1 MiB on, where the node has it.
/// OpenSSL uses the CPU's SHA instructions (several times faster on
/// binaries) but takes about 5 ms to start, the time `sha256sum` needs
/// for a megabyte; below that, the files of a batch of certificates and
/// configuration, `sha256sum` is cheaper.
macro_rules! big_sums {
    () => {
        "big_sums() { [ \"${1:-0}\" -ge 1048576 ] && command -v openssl >/dev/null 2>&1; }\n"
    };
}
pub(crate) use big_sums;

/// Writes a file atomically: a temporary file next to it (created 0600, so
/// a secret is never readable by others), content, a check that exactly
/// the expected bytes arrived, mode, owner, fsync, a rename over the old
/// file and an fsync of the directory.
///
/// Arguments: `PATH MODE OWNER SIZE SHA256`, the content on stdin. When the
/// content that arrived is not `SIZE` bytes with digest `SHA256` (stdin
/// ended early: kubeforge or ssh was killed, the connection dropped), the
/// temporary file is removed, the old file is left as it was and the
/// script exits 4 with a message naming the path, the expected and the
/// received size and digest.
pub const PUT: &str = concat!(
    sum256!(),
    r#"set -eu
p="$1"; mode="$2"; owner="$3"; size="$4"; sum="$5"
d=${p%/*}; d=${d:-/}
[ -d "$d" ] || mkdir -p -- "$d"
t=$(mktemp "$d/.kubeforge-tmp.XXXXXX")
trap 'rm -f -- "$t"' EXIT
trap 'exit 1' HUP INT TERM PIPE
cat > "$t"
got_size=$(stat -c %s -- "$t")
got_sum=$(sum256 "$size" < "$t")
if [ "$got_size" != "$size" ] || [ "$got_sum" != "$sum" ]; then
  echo "refusing to install $p: expected $size bytes with sha256 $sum, received $got_size bytes with sha256 $got_sum (the upload was cut short or altered); the old file is unchanged, run the command again" >&2
  exit 4
fi
chown -- "$owner" "$t"
chmod -- "$mode" "$t"
sync -- "$t" 2>/dev/null || sync
mv -f -- "$t" "$p"
trap - EXIT
sync -- "$d" 2>/dev/null || sync
# $6: the node's sha256 cache (see gather), told the new file's sum.
c="${6:-}"
new_lines() { printf '%s %s %s\n' "$(stat -L -c '%s %.9Z %i' -- "$p")" "$sum" "$p"; }
"#,
    remember_sums!()
);

/// The status [`PUT`] exits with when the content that arrived is not the
/// content that was sent.
pub const PUT_MISMATCH: i32 = 4;

/// The size and lowercase hex sha256 of `content`: the arguments [`PUT`]
/// checks the received file against.
pub fn size_and_sha256(content: &[u8]) -> (String, String) {
    let digest = Sha256::digest(content);
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    (content.len().to_string(), hex)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `content` to `path` on the node atomically with `mode` and
/// `owner` (`user:group`). The node installs the file only when exactly
/// `content` arrived (its size and sha256 are passed along and checked);
/// otherwise the old file stays and the error says so.
pub async fn put(
    t: &dyn Transport,
    path: &str,
    content: Vec<u8>,
    mode: u32,
    owner: &str,
) -> Result<(), TransportError> {
    put_cached(t, path, content, mode, owner, None).await
}

/// [`put`], and the node's sha256 cache (see
/// [`crate::gather`]) told the new file's sum.
pub async fn put_cached(
    t: &dyn Transport,
    path: &str,
    content: Vec<u8>,
    mode: u32,
    owner: &str,
    cache: Option<&str>,
) -> Result<(), TransportError> {
    let what = format!("write {path}");
    let (size, sha256) = size_and_sha256(&content);
    let mut args = vec![
        path.to_string(),
        format!("{mode:04o}"),
        owner.to_string(),
        size,
        sha256,
    ];
    args.extend(cache.map(str::to_string));
    t.run_ok(Script::new(&what, PUT).args(args).stdin(content))
        .await
        .map(|_| ())
}

/// Writes many files in one round trip, each as [`PUT`] does (a temporary
/// file next to it, checked for its size and sha256, mode and owner set),
/// then one flush of them all, the renames, and one flush of their
/// directories: a file is installed only when every file of the batch
/// arrived whole; otherwise none is, the old ones stay, and the script
/// exits [`PUT_MISMATCH`] naming the path.
///
/// Arguments: `STORE [CACHE]`. Stdin: per file a line `KIND MODE OWNER
/// SIZE SHA256 PATH`, KIND `D` followed by exactly SIZE bytes of content,
/// `B` for the blob named SHA256 in STORE (copied, the copy checked), or
/// `L` for such a blob checked as it entered the store in this run
/// (linked into place; see [`Source::Blob`]).
pub const PUT_ALL: &str = concat!(
    big_sums!(),
    r#"set -eu
store="$1"; c="${2:-}"
u0=$(umask)
w=$(mktemp -d)
list="$w/list"
: > "$w/new"; : > "$w/modes"
# Every temporary file is named in $w/new as soon as it exists, and is
# removed when the script fails; after the renames, none is left.
trap 'while IFS= read -r t; do rm -f -- "$t"; done < "$w/new"; rm -rf -- "$w"' EXIT
trap 'exit 1' HUP INT TERM PIPE
uid=
i=0
# The store's blobs that no file is a link of yet (one name), read in one
# stat at the first L record: " SHA256 SHA256 ... ".
single=
# $list: "TMP SHA256 SIZE HOW PATH", HOW upload, store (a copy) or checked
# (a link of a blob checked as it arrived).
while IFS=' ' read -r kind mode owner size sum p; do
  d=${p%/*}; d=${d:-/}
  [ -d "$d" ] || mkdir -p -- "$d"
  # The temporary file, created exclusively (noclobber: O_EXCL) and 0600
  # (a secret is never readable by others) under this process's name;
  # when a killed run left that name, mktemp makes one.
  i=$((i + 1)); t="$d/.kubeforge-tmp.$$.$i"
  set -C; umask 077
  if ! true > "$t" 2>/dev/null; then t=$(mktemp "$d/.kubeforge-tmp.XXXXXX"); fi
  umask "$u0"; set +C
  printf '%s\n' "$t" >> "$w/new"
  case "$kind" in
    D) head -c "$size" >> "$t"; how=upload ;;
    B|L) how=store
      # A blob checked as it arrived in this run (L) becomes the file
      # itself: a link, when no other file is one yet (a file's mode and
      # owner are its inode's). Else a copy, checked with the others.
      if [ "$kind" = L ] && [ -z "$single" ]; then
        single=$(stat -c '%h %n' -- "$store"/* 2>/dev/null | { s=" "; while read -r h n; do [ "$h" != 1 ] || s="$s${n##*/} "; done; printf '%s' "$s"; })
      fi
      if [ "$kind" = L ] && case "$single" in *" $sum "*) true ;; *) false ;; esac && ln -f -- "$store/$sum" "$t" 2>/dev/null; then
        how=checked
        single="${single%% "$sum" *} ${single#* "$sum" }"
      else
        cp --reflink=auto -- "$store/$sum" "$t"
      fi ;;
    *) echo "unknown record "$kind" for $p" >&2; exit 2 ;;
  esac
  printf '%s %s %s %s %s\n' "$t" "$sum" "$size" "$how" "$p" >> "$list"
  # A new temporary file is already root's and 0600; a link is the blob's
  # inode, which root made in the store (root's too), with the blob's mode.
  [ "$owner" != root:root ] || [ -n "$uid" ] || uid=$(id -u)
  if [ "$owner" != root:root ] || [ "$uid" != 0 ]; then chown -- "$owner" "$t"; fi
  if [ "$mode" != 0600 ] || [ "$how" = checked ]; then printf '%s %s\n' "$mode" "$t" >> "$w/modes"; fi
done
# One chmod per mode for the whole batch.
seen=" "
while IFS=' ' read -r m _; do
  case "$seen" in *" $m "*) continue ;; esac
  seen="$seen$m "
  set --
  while IFS=' ' read -r m2 t; do [ "$m2" != "$m" ] || set -- "$@" "$t"; done < "$w/modes"
  chmod -- "$m" "$@"
done < "$w/modes"
# The size and sha256 of every file not linked from a checked blob, each
# in one program for the whole batch (OpenSSL for a megabyte or more,
# where the node has it; see big_sums).
set --
total=0
while IFS=' ' read -r t sum size how p; do
  [ "$how" = checked ] || { set -- "$@" "$t"; total=$((total + size)); }
done < "$list"
: > "$w/sum"; : > "$w/size"
if [ "$#" -gt 0 ]; then
  if big_sums "$total"; then
    openssl dgst -sha256 -r "$@" > "$w/sum" 2>/dev/null || true
  else
    sha256sum -- "$@" > "$w/sum" 2>/dev/null || true
  fi
  stat -c %s -- "$@" > "$w/size" 2>/dev/null || true
fi
exec 6< "$w/sum" 7< "$w/size"
while IFS=' ' read -r t sum size how p; do
  [ "$how" != checked ] || continue
  got_sum=; got_size=
  IFS=' ' read -r got_sum _ <&6 || true
  IFS= read -r got_size <&7 || true
  if [ "$got_size" != "$size" ] || [ "$got_sum" != "$sum" ]; then
    from="from the blob store"; [ "$how" != upload ] || from="the upload was cut short or altered"
    echo "refusing to install $p: expected $size bytes with sha256 $sum, received ${got_size:-?} bytes with sha256 ${got_sum:-?} ($from); no file of this batch was installed, the old ones are unchanged: run the command again" >&2
    exit 4
  fi
done < "$list"
exec 6<&- 7<&-
set --
while IFS=' ' read -r t sum size how p; do set -- "$@" "$t"; done < "$list"
[ "$#" -eq 0 ] || sync -- "$@" 2>/dev/null || sync
set --
while IFS=' ' read -r t sum size how p; do
  mv -f -- "$t" "$p"
  d=${p%/*}; set -- "$@" "${d:-/}"
done < "$list"
: > "$w/new"
[ "$#" -eq 0 ] || sync -- "$@" 2>/dev/null || sync
# The node's sha256 cache (see gather), told every new file's sum: the
# keys of all files in one `stat`, joined with the sums by path.
new_lines() {
  set --
  while IFS=' ' read -r t sum size how p; do set -- "$@" "$p"; done < "$list"
  stat -L -c '%s %.9Z %i %n' -- "$@" 2>/dev/null | awk '
    NR == FNR { p = substr($0, length($1 $2 $3 $4) + 5); sum[p] = $2; next }
    { p = substr($0, length($1 $2 $3) + 4); if (p in sum) print $1 " " $2 " " $3 " " sum[p] " " p }' "$list" -
}
"#,
    remember_sums!()
);

/// What one file of a [`put_all`] batch holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Bytes(Vec<u8>),
    /// A blob of the node's store. `checked`: its sha256 was checked as it
    /// arrived in this run, and it is installed as a link of the store's
    /// file when it can be (see [`crate::blobs::drop`]); else it is copied
    /// and the copy checked against its sha256 and size.
    Blob {
        sha256: String,
        size: u64,
        checked: bool,
    },
}

/// One file of a [`put_all`] batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutFile {
    pub path: String,
    pub mode: u32,
    pub owner: String,
    pub source: Source,
}

/// Writes `files` on the node in one round trip ([`PUT_ALL`]): blobs from
/// `store`, and the node's sha256 `cache` told the new sums.
pub async fn put_all(
    t: &dyn Transport,
    files: Vec<PutFile>,
    store: &str,
    cache: Option<&str>,
) -> Result<(), TransportError> {
    match put_all_part(&files, store, cache) {
        Some((part, stdin)) => run_parts(t, vec![part], stdin).await,
        None => Ok(()),
    }
}

/// [`put_all`] as a part of a longer round trip ([`run_parts`]): the part
/// and its stdin; `None` without files.
pub fn put_all_part(
    files: &[PutFile],
    store: &str,
    cache: Option<&str>,
) -> Option<(Part, Vec<u8>)> {
    if files.is_empty() {
        return None;
    }
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    let what = format!("write {}", paths.join(", "));
    let mut stdin = Vec::new();
    for f in files {
        let (kind, size, sha256, bytes) = match &f.source {
            Source::Bytes(b) => {
                let (size, sha256) = size_and_sha256(b);
                ("D", size, sha256, Some(b))
            }
            Source::Blob {
                sha256,
                size,
                checked,
            } => {
                let kind = if *checked { "L" } else { "B" };
                (kind, size.to_string(), sha256.clone(), None)
            }
        };
        stdin.extend_from_slice(
            format!(
                "{kind} {:04o} {} {size} {sha256} {}\n",
                f.mode, f.owner, f.path
            )
            .as_bytes(),
        );
        if let Some(b) = bytes {
            stdin.extend_from_slice(b);
        }
    }
    let mut args = vec![store.to_string()];
    args.extend(cache.map(str::to_string));
    let part = Part {
        what,
        body: PUT_ALL.to_string(),
        args,
        input: true,
        timeout: Duration::from_secs(600),
    };
    Some((part, stdin))
}

/// What a file is on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStat {
    pub sha256: String,
    pub mode: u32,
    pub owner: String,
}

/// One line per path: `F MODE OWNER SHA256 PATH` or `M PATH` (missing).
pub const STAT: &str = r#"for p in "$@"; do
  if [ -f "$p" ]; then
    s=$(sha256sum < "$p" | cut -d' ' -f1)
    printf 'F %s %s %s %s\n' "$(stat -c %a "$p")" "$(stat -c %U:%G "$p")" "$s" "$p"
  else
    printf 'M %s\n' "$p"
  fi
done
"#;

/// Stats many files in one round trip. Read only.
pub async fn stat(
    t: &dyn Transport,
    paths: &[String],
) -> Result<BTreeMap<String, FileStat>, TransportError> {
    let mut out = BTreeMap::new();
    for chunk in paths.chunks(500) {
        let o = t
            .run_ok(Script::new("stat files", STAT).args(chunk.iter().cloned()))
            .await?;
        for line in o.stdout_str().lines() {
            let mut parts = line.splitn(5, ' ');
            if parts.next() != Some("F") {
                continue;
            }
            let (Some(mode), Some(owner), Some(sha), Some(path)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(mode) = u32::from_str_radix(mode, 8) else {
                continue;
            };
            out.insert(
                path.to_string(),
                FileStat {
                    sha256: sha.to_string(),
                    mode,
                    owner: owner.to_string(),
                },
            );
        }
    }
    Ok(out)
}

pub async fn read(t: &dyn Transport, path: &str) -> Result<Option<Vec<u8>>, TransportError> {
    let o = t
        .run(Script::new("read file", r#"[ -f "$1" ] || exit 3; cat "$1""#).args([path]))
        .await?;
    match o.status {
        0 => Ok(Some(o.stdout)),
        3 => Ok(None),
        _ => Err(TransportError::Failed {
            node: t.node().to_string(),
            what: format!("read {path}"),
            status: o.status,
            stderr: o.stderr_str(),
        }),
    }
}

/// `active enabled` per unit, from systemctl. Read only.
pub const UNITS: &str = r#"for u in "$@"; do
  printf '%s %s %s\n' "$u" "$(systemctl is-active "$u" 2>/dev/null || true)" "$(systemctl is-enabled "$u" 2>/dev/null || true)"
done
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnitState {
    pub active: bool,
    pub enabled: bool,
}

pub async fn units(
    t: &dyn Transport,
    units: &[String],
) -> Result<BTreeMap<String, UnitState>, TransportError> {
    let o = t
        .run_ok(Script::new("systemctl is-active", UNITS).args(units.iter().cloned()))
        .await?;
    let mut out = BTreeMap::new();
    for line in o.stdout_str().lines() {
        let mut p = line.split_whitespace();
        if let Some(u) = p.next() {
            out.insert(
                u.to_string(),
                UnitState {
                    active: p.next() == Some("active"),
                    enabled: p.next() == Some("enabled"),
                },
            );
        }
    }
    Ok(out)
}

/// Runs `systemctl ARGS...` and fails with the unit's journal on error.
pub async fn systemctl(t: &dyn Transport, args: &[&str]) -> Result<Output, TransportError> {
    let what = format!("systemctl {}", args.join(" "));
    t.run_ok(
        Script::new(&what, r#"systemctl "$@""#)
            .args(args.iter().map(|s| s.to_string()))
            .timeout(Duration::from_secs(180)),
    )
    .await
}

/// The exit status of [`START`] when a unit did not start (its stdout
/// names the unit).
pub const START_FAILED: i32 = 5;

/// `$1` `reload` or not, `$2` `block` or `no-block`, then the units:
/// `systemctl daemon-reload` when asked, every unit enabled in one call
/// (without the reload each `enable` would do), then each started in
/// order, waiting for it unless `no-block`. A unit that does not start
/// stops the rest: its name on stdout, exit [`START_FAILED`].
pub const START: &str = r#"reload="$1"; nb=; [ "$2" != no-block ] || nb=--no-block; shift 2
if [ "$reload" = reload ]; then systemctl daemon-reload || exit; fi
[ "$#" -eq 0 ] || systemctl enable --no-reload "$@" || exit
for u in "$@"; do
  systemctl start $nb "$u" || { echo "$u"; exit 5; }
done
"#;

/// Why [`reload_and_start`] failed.
#[derive(Debug)]
pub enum StartError {
    /// This unit did not start (the ones before it did; those after it
    /// were not started).
    Unit {
        unit: String,
        detail: String,
    },
    Transport(TransportError),
}

/// `systemctl daemon-reload` (with `reload`), then `units` enabled and
/// started one after the other in their order, in one round trip (see
/// [`START`]). Its name in logs and errors reads as the commands it runs.
pub async fn reload_and_start(
    t: &dyn Transport,
    reload: bool,
    units: &[String],
    no_block: bool,
) -> Result<(), StartError> {
    if !reload && units.is_empty() {
        return Ok(());
    }
    let mut what = Vec::new();
    if reload {
        what.push("systemctl daemon-reload".to_string());
    }
    if !units.is_empty() {
        what.push(format!("systemctl enable --no-reload {}", units.join(" ")));
    }
    let flag = if no_block { "--no-block " } else { "" };
    what.extend(units.iter().map(|u| format!("systemctl start {flag}{u}")));
    let what = what.join(", ");
    let mut args = vec![
        if reload { "reload" } else { "-" }.to_string(),
        if no_block { "no-block" } else { "block" }.to_string(),
    ];
    args.extend(units.iter().cloned());
    let secs = 180 * (1 + units.len() as u64);
    let o = t
        .run(
            Script::new(&what, START)
                .args(args)
                .timeout(Duration::from_secs(secs)),
        )
        .await
        .map_err(StartError::Transport)?;
    if o.success() {
        return Ok(());
    }
    match last_line(&o) {
        Some(unit) if o.status == START_FAILED && units.contains(&unit) => Err(StartError::Unit {
            unit,
            detail: o.stderr_str().trim().to_string(),
        }),
        _ => Err(StartError::Transport(TransportError::Failed {
            node: t.node().to_string(),
            what,
            status: o.status,
            stderr: o.stderr_str().trim().to_string(),
        })),
    }
}

/// The last line a batch printed when it failed: which of its parts did.
fn last_line(o: &Output) -> Option<String> {
    o.stdout_str().lines().last().map(|l| l.trim().to_string())
}

/// Runs parts in order until one fails: its number (from 1) on stdout,
/// and its exit status. Arguments: per part `WHAT SCRIPT NARGS INPUT
/// ARGS...`; WHAT is its name (for the recording transport), INPUT 1
/// gives the part the round trip's stdin, 0 gives it /dev/null. Each part
/// runs as `sh -c SCRIPT kubeforge ARGS...` would, in a subshell of its
/// own (a fork, no new program; its `exit`, `set -e`, traps and
/// variables stay there; none of this script's variables are left in it),
/// its script never an argument of another program: a large one (the
/// hosts or pod routes of a thousand nodes) is not refused by the
/// kernel's limit on one argument. The subshell is not part of an `||`
/// list, which would switch its `set -e` off.
pub const PARTS: &str = r#"_kf_i=0
while [ "$#" -gt 0 ]; do
  _kf_i=$((_kf_i + 1)); _kf_s=$2; _kf_n=$3; _kf_in=$4; shift 4
  # The part's arguments: "${1}" ... "${n}", referred to, not expanded.
  _kf_r=; _kf_k=1
  while [ "$_kf_k" -le "$_kf_n" ]; do _kf_r="$_kf_r \"\${$_kf_k}\""; _kf_k=$((_kf_k + 1)); done
  _kf_p="( set --$_kf_r
unset _kf_i _kf_n _kf_in _kf_r _kf_k _kf_p _kf_st
eval \"unset _kf_s
\$_kf_s\" )"
  if [ "$_kf_in" = 1 ]; then
    eval "$_kf_p"
  else
    eval "$_kf_p" </dev/null
  fi
  _kf_st=$?
  [ "$_kf_st" = 0 ] || { echo "$_kf_i"; exit "$_kf_st"; }
  shift "$_kf_n"
done
"#;

/// One script of a [`run_parts`] round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Its name in messages, as if it had run alone.
    pub what: String,
    pub body: String,
    pub args: Vec<String>,
    /// It reads the round trip's stdin (at most one part does).
    pub input: bool,
    pub timeout: Duration,
}

impl Part {
    /// A step: a script without arguments or input.
    pub fn step(name: &str, script: &str) -> Self {
        Part {
            what: name.to_string(),
            body: script.to_string(),
            args: Vec::new(),
            input: false,
            timeout: STEP_TIMEOUT,
        }
    }

    /// Sets a file's owner and mode.
    pub fn chmod(path: &str, mode: u32, owner: &str) -> Self {
        Part {
            what: format!("chmod {mode:04o} {path}"),
            body: r#"chown "$3" "$1" && chmod "$2" "$1""#.to_string(),
            args: vec![path.to_string(), format!("{mode:04o}"), owner.to_string()],
            input: false,
            timeout: Duration::from_secs(120),
        }
    }
}

/// How long one step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `parts` in order in one round trip ([`PARTS`]), `stdin` given to
/// the part that reads it; the first that fails stops the rest, and the
/// error names it as if it had run alone.
pub async fn run_parts(
    t: &dyn Transport,
    parts: Vec<Part>,
    stdin: Vec<u8>,
) -> Result<(), TransportError> {
    if let [p] = parts.as_slice() {
        let mut s = Script::new(&p.what, &p.body)
            .args(p.args.iter().cloned())
            .timeout(p.timeout);
        if p.input {
            s = s.stdin(stdin);
        }
        return t.run_ok(s).await.map(|_| ());
    }
    if parts.is_empty() {
        return Ok(());
    }
    let what = parts
        .iter()
        .map(|p| p.what.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let timeout = parts.iter().map(|p| p.timeout).sum();
    let args = parts.iter().flat_map(|p| {
        [
            p.what.clone(),
            p.body.clone(),
            p.args.len().to_string(),
            if p.input { "1" } else { "0" }.to_string(),
        ]
        .into_iter()
        .chain(p.args.iter().cloned())
    });
    let mut s = Script::new(&what, PARTS).args(args).timeout(timeout);
    if parts.iter().any(|p| p.input) {
        s = s.stdin(stdin);
    }
    let o = t.run(s).await?;
    if o.success() {
        return Ok(());
    }
    let failed = last_line(&o)
        .and_then(|l| l.parse::<usize>().ok())
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| parts.get(i));
    Err(TransportError::Failed {
        node: t.node().to_string(),
        what: failed.map_or(what, |p| p.what.clone()),
        status: o.status,
        stderr: o.stderr_str().trim().to_string(),
    })
}

/// Runs `steps` (name, script) in order in one round trip (see
/// [`run_parts`]).
pub async fn run_steps(t: &dyn Transport, steps: &[(&str, &str)]) -> Result<(), TransportError> {
    let parts = steps.iter().map(|(n, s)| Part::step(n, s)).collect();
    run_parts(t, parts, Vec::new()).await
}

/// The last lines of a unit's journal (for error messages).
pub async fn journal(t: &dyn Transport, unit: &str, lines: u32) -> String {
    match t
        .run(
            Script::new(
                "journalctl",
                r#"journalctl -u "$1" -n "$2" --no-pager -o short-iso 2>&1 || true"#,
            )
            .args([unit.to_string(), lines.to_string()]),
        )
        .await
    {
        Ok(o) => o.stdout_str(),
        Err(e) => format!("(journal unavailable: {e})"),
    }
}

/// Facts about the host itself, gathered read-only in one round trip.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostFacts {
    pub hostname: String,
    pub machine_id: String,
    /// Seconds since the epoch on the node.
    pub time: f64,
    /// This machine's clock (seconds since the epoch) when the request
    /// that read [`time`](Self::time) went out and when its answer came
    /// back: the node read its clock in between (0: not recorded).
    pub asked_at: f64,
    pub answered_at: f64,
    pub os_id: String,
    pub os_version: String,
    pub arch: String,
    pub kernel: String,
    pub has_systemd: bool,
    /// TCP ports something listens on (in facts gathered with
    /// [`crate::gather`], only when a unit asked for is not active: empty
    /// otherwise).
    pub listening: Vec<u16>,
    /// Commands kubeforge needs that the node lacks.
    pub missing_commands: Vec<String>,
    /// Whether systemd reports the clock synchronized (None: unknown, or
    /// not asked: facts ask only nodes kubeforge has not installed yet).
    pub ntp_synchronized: Option<bool>,
    /// The `unmet=` lines of the extra checks given to [`host_with`].
    pub unmet: Vec<String>,
}

/// The host facts as `key=value` lines, read-only, without the node's
/// clock (`time=`) and the listening ports ([`LISTEN`]): the kernel and
/// architecture from `/proc` where it has them (no `uname` to start).
pub const HOST_BASE: &str = r#"h=; read -r h < /proc/sys/kernel/hostname 2>/dev/null || h=$(hostname)
echo "hostname=$h"
m=; read -r m < /etc/machine-id 2>/dev/null
echo "machine_id=$m"
. /etc/os-release 2>/dev/null && { echo "os_id=$ID"; echo "os_version=${VERSION_ID:-}"; }
o=; a=; read -r o < /proc/sys/kernel/ostype 2>/dev/null; read -r a < /proc/sys/kernel/arch 2>/dev/null
if [ -z "$o" ] || [ -z "$a" ]; then u=$(uname -sm); o=${u%% *}; a=${u#* }; fi
echo "arch=$a"
echo "kernel=$o"
[ -d /run/systemd/system ] && echo "systemd=yes"
if [ "${ntp_known:-}" != yes ] && command -v timedatectl >/dev/null 2>&1; then
  ntp=$(timedatectl show -p NTPSynchronized --value 2>/dev/null || true)
  [ -n "$ntp" ] && echo "ntp=$ntp"
fi
for c in sh sha256sum stat mktemp flock systemctl journalctl curl ip; do
  command -v "$c" >/dev/null 2>&1 || echo "missing=$c"
done
"#;

/// Two awk functions, for a larger program: `listening()` prints
/// `listen=PORT` for every TCP port something listens on, from
/// `/proc/net/tcp` and `/proc/net/tcp6`, to the file named by `listen`
/// (`/dev/stdout` for standard output).
pub const LISTEN: &str = r#"function hex(s,  i, n) { for (i = 1; i <= length(s); i++) n = n * 16 + index("0123456789ABCDEF", substr(s, i, 1)) - 1; return n }
  function listening(  k, f, first, l, w, a, n) { for (k = 1; k <= 2; k++) { f = k == 1 ? "/proc/net/tcp" : "/proc/net/tcp6"; first = 1
    while ((getline l < f) > 0) { if (first) { first = 0; continue }
      split(l, w, " "); if (w[4] == "0A") { n = split(w[2], a, ":"); print "listen=" hex(a[n]) > listen } } } }
"#;

/// Every host fact: [`HOST_BASE`], the node's clock and the listening
/// ports.
pub fn host_script() -> String {
    format!(
        "{HOST_BASE}echo \"time=$(date +%s.%N)\"\nawk -v listen=/dev/stdout '{LISTEN}  BEGIN {{ listening() }}' 2>/dev/null\n"
    )
}

pub async fn host(t: &dyn Transport) -> Result<HostFacts, TransportError> {
    host_with(t, "").await
}

/// [`host`] with `extra`, read-only shell run after [`host_script`] in the same
/// round trip; its `unmet=VALUE` lines end up in [`HostFacts::unmet`].
pub async fn host_with(t: &dyn Transport, extra: &str) -> Result<HostFacts, TransportError> {
    let script = format!("{}{extra}", host_script());
    let o = t.run_ok(Script::new("gather host facts", &script)).await?;
    Ok(parse_host(&o.stdout_str()))
}

/// The `key=value` lines [`host_script`] (and an extra script) print.
pub fn parse_host(text: &str) -> HostFacts {
    let mut f = HostFacts::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "hostname" => f.hostname = v.to_string(),
            "machine_id" => f.machine_id = v.to_string(),
            "time" => f.time = v.parse().unwrap_or_default(),
            "os_id" => f.os_id = v.to_string(),
            "os_version" => f.os_version = v.to_string(),
            "arch" => f.arch = v.to_string(),
            "kernel" => f.kernel = v.to_string(),
            "systemd" => f.has_systemd = true,
            "missing" => f.missing_commands.push(v.to_string()),
            "unmet" => f.unmet.push(v.to_string()),
            "ntp" => f.ntp_synchronized = Some(v == "yes"),
            "listen" => {
                if let Ok(port) = v.parse() {
                    if !f.listening.contains(&port) {
                        f.listening.push(port);
                    }
                }
            }
            _ => {}
        }
    }
    f.listening.sort_unstable();
    f
}

/// `take_lock PATH OWNER`: takes PATH with flock on this shell's fd 9
/// (held while the shell keeps it open) and writes OWNER beside it
/// (`PATH.owner`); prints `locked`, or `busy OWNER` when another holds it,
/// or `cannot open PATH`, and returns 0 only when it took it.
macro_rules! take_lock {
    () => {
        r#"take_lock() {
  if ! command exec 9>>"$1"; then echo "cannot open $1"; return 1; fi
  if flock -n 9; then echo "$2" > "$1.owner"; echo locked; return 0; fi
  exec 9>&-
  echo "busy $(cat "$1.owner" 2>/dev/null)"
  return 1
}
"#
    };
}
pub(crate) use take_lock;

/// Takes `/run/kubeforge.lock` (the `take_lock` shell function) and holds
/// it until the returned handle is released (the script waits on its
/// stdin). Fails at once when another apply holds it.
pub const LOCK: &str = concat!(
    take_lock!(),
    r#"take_lock "$1" "$2" || exit 1
read -r _ || true
"#
);

pub const LOCK_PATH: &str = "/run/kubeforge.lock";

/// The lock at `path` taken by a held [`LOCK`] script on the node of `t`
/// (what [`Transport::lock`] does unless the transport has its own way).
pub async fn lock_in_session<T: Transport + ?Sized>(
    t: &T,
    path: &str,
    owner: &str,
) -> Result<Box<dyn crate::Held>, TransportError> {
    let script = Script::new("take the apply lock", LOCK)
        .args([path, owner])
        .timeout(Duration::from_secs(30));
    let (first, held) = t.hold(script).await?;
    locked(t.node(), path, first, held).await
}

/// The lock at `path` taken, when the first line of what takes it
/// (`first`, from [`LOCK`] or a transport's own way) says `locked`; else
/// `held` released and why it was refused: `busy OWNER` when another
/// apply holds it.
pub async fn locked(
    node: &str,
    path: &str,
    first: String,
    held: Box<dyn crate::Held>,
) -> Result<Box<dyn crate::Held>, TransportError> {
    if first == "locked" {
        return Ok(held);
    }
    held.release().await;
    let stderr = match first.strip_prefix("busy") {
        Some(owner) => format!(
            "another kubeforge apply holds it ({}); wait for it to finish",
            owner.trim()
        ),
        None => first,
    };
    Err(TransportError::Failed {
        node: node.to_string(),
        what: format!("take the apply lock {path}"),
        status: 1,
        stderr,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::{LocalTransport, Script, Transport};

    /// The same sum with OpenSSL (a megabyte or more, where the node has
    /// it) and with coreutils (less, or a node without OpenSSL).
    #[tokio::test]
    async fn sum256_by_size_with_and_without_openssl() {
        let bin = tempfile::tempdir().unwrap();
        let found = std::process::Command::new("sh")
            .args(["-c", "command -v sha256sum"])
            .output()
            .unwrap();
        let path = String::from_utf8(found.stdout).unwrap();
        std::os::unix::fs::symlink(path.trim(), bin.path().join("sha256sum")).unwrap();
        let t = LocalTransport::new("n1");
        let script = concat!(
            sum256!(),
            r#"[ -z "$1" ] || PATH="$1"
if big_sums "$2"; then echo openssl; else echo sha256sum; fi
printf abc | sum256 "$2""#
        );
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let openssl = std::process::Command::new("sh")
            .args(["-c", "command -v openssl"])
            .output()
            .unwrap()
            .status
            .success();
        for (path, size, program) in [
            (String::new(), "3", "sha256sum"),
            (String::new(), "1048575", "sha256sum"),
            (
                String::new(),
                "1048576",
                if openssl { "openssl" } else { "sha256sum" },
            ),
            (bin.path().display().to_string(), "3", "sha256sum"),
            (bin.path().display().to_string(), "2000000", "sha256sum"),
        ] {
            let o = t
                .run(Script::new("sum", script).args([path.clone(), size.to_string()]))
                .await
                .unwrap();
            assert!(o.success(), "{path} {size}: {}", o.stderr_str());
            assert_eq!(
                o.stdout_str().trim(),
                format!("{program}\n{abc}"),
                "PATH {path:?}, {size} bytes"
            );
        }
    }
}
