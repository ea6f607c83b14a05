#!/usr/bin/env bash
# Installs the real media peers of the media interop tests (tests/gstreamer_rfc4571.rs,
# tests/rtsp_video.rs; docs/MEDIA-INTEROP.md): GStreamer (gst-launch-1.0 with the tcp, rtp,
# mulaw, opus, wav and avi elements; the RTSP server with its Python bindings), ffmpeg and
# espeak-ng from Debian, and one real video clip, Megamind.avi, taken out of the opencv-doc
# package without installing that package.
#
# Idempotent and fast when everything is present: package status is read with dpkg-query before
# apt runs, and the clip is fetched only when missing.
# The clip goes to $CONNECT_TUNNEL_MEDIA_DIR (default /var/cache/connect-tunnel), where the tests
# look for it.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

MEDIA_DIR="${CONNECT_TUNNEL_MEDIA_DIR:-/var/cache/connect-tunnel}"
CLIP="$MEDIA_DIR/Megamind.avi"
CLIP_IN_DEB="./usr/share/doc/opencv-doc/examples/data/Megamind.avi"

# gstreamer1.0-plugins-base: tcpclientsink/tcpserversrc, audioconvert, audioresample, opus.
# gstreamer1.0-plugins-good: rtp (rtppcmupay, rtpopuspay, rtpstreampay, rtpmp4vpay, ...),
# mulaw, wavparse, wavenc, avidemux. The RTSP server and its GObject bindings load only under
# /usr/bin/python3 (Debian's python3-gi).
PACKAGES=(gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
    gir1.2-gst-rtsp-server-1.0 python3-gst-1.0 python3-gi ffmpeg espeak-ng)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

updated=""
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-media-deps: all packages present (${PACKAGES[*]})"
else
    echo "install-media-deps: installing ${missing[*]}"
    $SUDO apt-get update
    updated=1
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

if [ -s "$CLIP" ]; then
    echo "install-media-deps: $CLIP present"
else
    echo "install-media-deps: extracting Megamind.avi from opencv-doc into $MEDIA_DIR"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    # apt-get download runs as the invoking user and writes into the current directory.
    fetch() { (cd "$work" && apt-get download opencv-doc); }
    if ! fetch; then
        if [ -z "$updated" ]; then
            $SUDO apt-get update
            fetch
        else
            exit 1
        fi
    fi
    deb="$(ls "$work"/opencv-doc_*.deb)"
    $SUDO mkdir -p "$MEDIA_DIR"
    dpkg-deb --fsys-tarfile "$deb" | tar -xO -f - "$CLIP_IN_DEB" >"$work/Megamind.avi"
    if [ ! -s "$work/Megamind.avi" ]; then
        echo "install-media-deps: $CLIP_IN_DEB not found in $deb" >&2
        exit 1
    fi
    $SUDO install -m 0644 "$work/Megamind.avi" "$CLIP"
fi

for tool in /usr/bin/gst-launch-1.0 /usr/bin/gst-inspect-1.0 /usr/bin/ffmpeg /usr/bin/espeak-ng \
    /usr/bin/python3; do
    if [ ! -x "$tool" ]; then
        echo "install-media-deps: expected $tool after install, not found" >&2
        exit 1
    fi
done
for element in tcpclientsink tcpserversrc rtpstreampay rtpstreamdepay rtppcmupay rtppcmudepay \
    mulawenc mulawdec opusenc rtpopuspay wavparse wavenc audioconvert audioresample avidemux \
    ac3parse rtpmp4vpay rtpac3pay; do
    if ! gst-inspect-1.0 --exists "$element"; then
        echo "install-media-deps: GStreamer element $element missing after install" >&2
        exit 1
    fi
done
if ! /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer" 2>/dev/null; then
    echo "install-media-deps: python3 cannot load GstRtspServer (gir1.2-gst-rtsp-server-1.0)" >&2
    exit 1
fi
echo "install-media-deps: ready ($CLIP, $(stat -c %s "$CLIP") bytes)"
