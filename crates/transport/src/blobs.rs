//! Binaries in transit: a node's blob store (`/var/lib/kubeforge/blobs`,
//! files named by their sha256) is filled before a phase runs, from the
//! control machine (compressed on the wire) or from another node that
//! already holds the blob, so that the control machine's uplink carries
//! each binary a few times instead of once per node. Every blob is checked
//! (size and sha256) before it is renamed into the store, and again when
//! it is installed from there: a node never installs a binary whose sum it
//! has not checked.
//!
//! A node serves a blob to its peers with `systemd-socket-activate` (part
//! of systemd) on a port of its cluster address while the transfer lasts;
//! a peer fetches it with bash's `/dev/tcp`, after a one-time token. It
//! serves the blobs of its store, and the files in place it is given by
//! sha256 (binaries whose sum this run's facts found): nothing else.

use crate::{Held, Script, Transport, TransportError};
use std::time::Duration;

/// Where a node keeps blobs in transit.
pub const STORE: &str = "/var/lib/kubeforge/blobs";

/// How bytes are compressed on their way to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Zstd,
    Gzip,
    None,
}

impl Codec {
    fn arg(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Gzip => "gzip",
            Codec::None => "none",
        }
    }
}

/// What a node can take: the blobs it holds, how it can decompress, and
/// whether it can fetch from a peer (bash with /dev/tcp) and serve one
/// (systemd-socket-activate).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub held: Vec<String>,
    pub zstd: bool,
    pub gzip: bool,
    pub can_fetch: bool,
    pub can_serve: bool,
}

impl Inventory {
    /// The best codec the node decompresses.
    pub fn codec(&self) -> Codec {
        if self.zstd {
            Codec::Zstd
        } else if self.gzip {
            Codec::Gzip
        } else {
            Codec::None
        }
    }
}

const INVENTORY: &str = r#"d="$1"
[ -d "$d" ] && for f in "$d"/*; do [ -f "$f" ] && echo "held ${f##*/}"; done
command -v zstd >/dev/null 2>&1 && echo zstd
command -v gzip >/dev/null 2>&1 && echo gzip
command -v bash >/dev/null 2>&1 && echo fetch
command -v systemd-socket-activate >/dev/null 2>&1 && echo serve
exit 0
"#;

/// What the node holds (in the blob store `store`) and can do.
pub async fn inventory(t: &dyn Transport, store: &str) -> Result<Inventory, TransportError> {
    let o = t
        .run_ok(Script::new("list the blob store", INVENTORY).args([store]))
        .await?;
    let mut inv = Inventory::default();
    for line in o.stdout_str().lines() {
        match line.split_once(' ') {
            Some(("held", sha)) => inv.held.push(sha.to_string()),
            _ => match line {
                "zstd" => inv.zstd = true,
                "gzip" => inv.gzip = true,
                "fetch" => inv.can_fetch = true,
                "serve" => inv.can_serve = true,
                _ => {}
            },
        }
    }
    Ok(inv)
}

/// The end of every way into the store: `$t` holds what arrived; checked
/// against $size and $sum, then renamed to its name.
const INTO_STORE: &str = concat!(
    crate::ops::sum256!(),
    r#"got_size=$(stat -c %s -- "$t")
got_sum=$(sum256 "$size" < "$t")
if [ "$got_size" != "$size" ] || [ "$got_sum" != "$sum" ]; then
  echo "refusing blob $sum: expected $size bytes, received $got_size bytes with sha256 $got_sum" >&2
  exit 4
fi
mv -f -- "$t" "$d/$sum"
trap - EXIT
"#
);

/// The start of every way into the store: the store (0700) made when
/// missing, and `$t`, this process's name in it for what arrives (0644, as
/// the blob will be; the store's mode keeps it from others), removed
/// unless it becomes the blob.
const STORE_TEMP: &str = r#"[ -d "$d" ] || mkdir -p -m 0700 -- "$d"
umask 022
t="$d/.in.$$"
trap 'rm -f -- "$t"' EXIT
"#;

/// Blobs arrive in the background of the node's work (the next phase's
/// binaries while this one's units start, an upgrade's beside a running
/// control plane): their decompression, checks and writes yield the CPU
/// and the disk to the node's running components.
const BACKGROUND: &str =
    "renice -n 10 -p $$ >/dev/null 2>&1 || true\nionice -c 2 -n 7 -p $$ >/dev/null 2>&1 || true\n";

/// $1 store, $2 sha256, $3 size, $4 codec; the compressed bytes on stdin.
const RECEIVE: &str = r#"set -eu
BACKGROUND
d="$1"; sum="$2"; size="$3"; codec="$4"
STORE_TEMP
trap 'exit 1' HUP INT TERM PIPE
case "$codec" in
  zstd) zstd -q -d -c > "$t" ;;
  gzip) gzip -d -c > "$t" ;;
  *) cat > "$t" ;;
esac
INTO_STORE"#;

/// Sends a blob from the control machine, `data` compressed with `codec`.
pub async fn receive(
    t: &dyn Transport,
    store: &str,
    sha256: &str,
    size: u64,
    codec: Codec,
    data: Vec<u8>,
) -> Result<(), TransportError> {
    let body = RECEIVE
        .replace("BACKGROUND\n", BACKGROUND)
        .replace("STORE_TEMP\n", STORE_TEMP)
        .replace("INTO_STORE", INTO_STORE);
    let secs = 60 + data.len() as u64 / 5_000_000;
    t.run_ok(
        Script::new("receive a binary", &body)
            .args([
                store.to_string(),
                sha256.to_string(),
                size.to_string(),
                codec.arg().to_string(),
            ])
            .stdin(data)
            .timeout(Duration::from_secs(secs)),
    )
    .await
    .map(|_| ())
}

/// $1 store, $2 listen address, $3 port, $4 token, then `SHA256=PATH`
/// for each installed file it may hand on. Serves those files and the
/// blobs of the store to every peer whose request line is the token and a
/// sha256, until stdin closes: one server (and one SSH session) per node,
/// however many blobs it hands on. A sha256 it was not given and does not
/// hold gets nothing.
const SERVE: &str = r#"[ -d "$1" ] || [ "$#" -gt 4 ] || { echo "no blob store $1"; exit 1; }
store="$1"; listen="$2:$3"; port="$3"; token="$4"; shift 4
systemd-socket-activate -l "$listen" -a --inetd sh -c 'IFS=" " read -r t s || exit 1
[ "$t" = "$1" ] || exit 1
case "$s" in ""|*[!0-9a-f]*) exit 1 ;; esac
[ "${#s}" -eq 64 ] || exit 1
d="$2"; shift 2
for f in "$@"; do [ "${f%%=*}" = "$s" ] && exec cat -- "${f#*=}"; done
exec cat "$d/$s"' kubeforge "$token" "$store" "$@" 2>/dev/null &
pid=$!
i=0
while ! ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; do
  kill -0 "$pid" 2>/dev/null || { echo "cannot listen on $listen"; exit 1; }
  i=$((i + 1)); [ "$i" -gt 50 ] && { echo "cannot listen on $listen"; kill "$pid"; exit 1; }
  sleep 0.1
done
echo ready
read -r _ || true
kill "$pid" 2>/dev/null
"#;

/// Serves the blobs the node holds (now and later) on `address:port` to
/// peers that present `token`, until the handle is released; and the
/// files `installed` names, (sha256, path) pairs: binaries in place whose
/// sum the facts of this run found.
pub async fn serve(
    t: &dyn Transport,
    store: &str,
    address: &str,
    port: u16,
    token: &str,
    installed: &[(String, String)],
) -> Result<Box<dyn Held>, TransportError> {
    let args = [
        store.to_string(),
        address.to_string(),
        port.to_string(),
        token.to_string(),
    ];
    let files = installed.iter().map(|(sha, path)| format!("{sha}={path}"));
    let (first, held) = t
        .hold(
            Script::new("serve binaries to the other nodes", SERVE)
                .args(args.into_iter().chain(files))
                .timeout(Duration::from_secs(30)),
        )
        .await?;
    if first == "ready" {
        Ok(held)
    } else {
        held.release().await;
        Err(TransportError::Failed {
            node: t.node().to_string(),
            what: format!("serve the blobs of {store}"),
            status: 1,
            stderr: first,
        })
    }
}

/// $1 store, $2 sha256, $3 size, $4 peer address, $5 port, $6 token.
const FETCH: &str = r#"set -eu
BACKGROUND
d="$1"; sum="$2"; size="$3"
STORE_TEMP
trap 'exit 1' HUP INT TERM PIPE
bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "%s %s\n" "$3" "$4" >&3 && exec cat <&3' kubeforge "$4" "$5" "$6" "$sum" > "$t"
INTO_STORE"#;

/// Fetches a blob from a peer that serves it.
pub async fn fetch(
    t: &dyn Transport,
    store: &str,
    sha256: &str,
    size: u64,
    peer: &str,
    port: u16,
    token: &str,
) -> Result<(), TransportError> {
    let body = FETCH
        .replace("BACKGROUND\n", BACKGROUND)
        .replace("STORE_TEMP\n", STORE_TEMP)
        .replace("INTO_STORE", INTO_STORE);
    t.run_ok(
        Script::new("fetch a binary from another node", &body)
            .args([
                store.to_string(),
                sha256.to_string(),
                size.to_string(),
                peer.to_string(),
                port.to_string(),
                token.to_string(),
            ])
            .timeout(Duration::from_secs(60 + size / 5_000_000)),
    )
    .await
    .map(|_| ())
}

/// $1 the store, $2 the sha256 cache (or empty), then the blobs.
const DROP: &str = r#"d="$1"; c="$2"; shift 2
for s in "$@"; do set -- "$@" "$d/$s"; shift; done
# The inodes of the blobs installed as links (more than one name), read
# in one stat; then every blob removed in one rm.
ino=" "
if [ "$#" -gt 0 ]; then
  ino=$(stat -c '%h %i' -- "$@" 2>/dev/null | { ino=" "; while read -r h i; do [ "$h" = 1 ] || ino="$ino$i "; done; printf '%s' "$ino"; })
  rm -f -- "$@"
fi
rmdir -- "$d" 2>/dev/null
# Files installed as links of these blobs changed their ctime as the store
# let go of them: their lines in the sha256 cache (see gather) follow,
# when the file is still the same inode of the same size (the files read
# in one stat).
if [ "$ino" != " " ] && [ -n "$c" ] && [ -f "$c" ]; then
  {
    umask 077
    exec 8>>"$c.lock"; flock 8
    set --
    while IFS= read -r l; do
      r=${l#* }; r=${r#* }; i=${r%% *}; r=${r#* }; p=${r#* }
      case "$ino" in *" $i "*) set -- "$@" "$p" ;; esac
    done < "$c"
    if [ "$#" -gt 0 ]; then
      n="${c%/*}/.sha256-cache.$$"
      stat -L -c '%s %.9Z %i %n' -- "$@" 2>/dev/null | awk -v ino="$ino" '
        f == 1 { p = substr($0, length($1 $2 $3) + 4); key[p] = $1 " " $2 " " $3; size[p] = $1; node[p] = $3; next }
        { p = substr($0, length($1 $2 $3 $4) + 5) }
        index(ino, " " $3 " ") == 0 { print; next }
        (p in key) && size[p] == $1 && node[p] == $3 { print key[p] " " $4 " " p }' f=1 - f=2 "$c" > "$n"
      mv -f -- "$n" "$c"
    fi
  } 2>/dev/null || true
fi
exit 0
"#;

/// Removes these blobs from the node's store, and keeps the node's sha256
/// `cache` true for the files installed as their links.
pub async fn drop(
    t: &dyn Transport,
    store: &str,
    sha256s: &[String],
    cache: Option<&str>,
) -> Result<(), TransportError> {
    let args = [store.to_string(), cache.unwrap_or_default().to_string()];
    t.run_ok(
        Script::new("clear the blob store", DROP)
            .args(args.into_iter().chain(sha256s.iter().cloned())),
    )
    .await
    .map(|_| ())
}
