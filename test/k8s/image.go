package k8s

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
)

// Images every node has; pods name them with imagePullPolicy: Never.
const (
	// BusyboxImage is a static busybox (/bin/busybox and a symbolic
	// link per applet in /bin: sh, sleep, cat, ...).
	BusyboxImage = "cgfs.test/busybox:1"
	// PauseImage is containerd's sandbox image: testdata/pause.
	PauseImage = "cgfs.test/pause:1"
)

// ImportImage builds an image of one layer holding files (path in the
// image -> file on the host, mode kept) and their parent directories,
// with entrypoint, and imports it into the node's containerd (namespace
// k8s.io) under ref. Nothing is pulled from anywhere.
func (c *Cluster) ImportImage(t *testing.T, ref string, files map[string]string, entrypoint []string) {
	t.Helper()
	var entries []layerEntry
	for p, host := range files {
		entries = append(entries, layerEntry{path: p, hostFile: host})
	}
	if err := c.importImage(ref, entries, entrypoint); err != nil {
		t.Fatalf("importing %s: %v", ref, err)
	}
}

// layerEntry is one file of an image layer: a copy of hostFile, data,
// a symbolic link to link, or a directory.
type layerEntry struct {
	path     string
	hostFile string
	data     []byte
	link     string
	dir      bool
	mode     int64 // for data and directories; 0 means 0644 or 0755
}

// importImage writes a docker-archive tar (manifest.json, the JSON
// config, the layer tar) and has ctr import it in the node.
func (c *Cluster) importImage(ref string, entries []layerEntry, entrypoint []string) error {
	dir := filepath.Join(c.dir, "images")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "image-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := writeDockerArchive(f, ref, entries, entrypoint); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	out, err := c.InNode(c.bin.ctr, "-n", "k8s.io", "images", "import", "--snapshotter", "overlayfs", f.Name())
	if err != nil {
		return fmt.Errorf("ctr images import: %v\n%s", err, out)
	}
	return nil
}

// busyboxEntries are the files of BusyboxImage: the host's static
// busybox, a link per applet it lists, and what a shell expects.
func busyboxEntries(busybox string) ([]layerEntry, error) {
	out, err := runOutput(busybox, "--list")
	if err != nil {
		return nil, fmt.Errorf("%s --list: %v", busybox, err)
	}
	entries := []layerEntry{
		{path: "bin/busybox", hostFile: busybox},
		{path: "tmp", dir: true, mode: 0o1777},
		{path: "etc/passwd", data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{path: "etc/group", data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		{path: "root", dir: true, mode: 0o700},
	}
	for _, applet := range strings.Fields(out) {
		if applet != "busybox" {
			entries = append(entries, layerEntry{path: "bin/" + applet, link: "busybox"})
		}
	}
	return entries, nil
}

// writeDockerArchive writes what `docker save` would for one image of
// one layer: ctr images import reads manifest.json, the config it names
// (whose rootfs.diff_ids has the layer's sha256) and the layer.
func writeDockerArchive(w io.Writer, ref string, entries []layerEntry, entrypoint []string) error {
	layer, err := buildLayer(entries)
	if err != nil {
		return err
	}
	layerSum := sha256.Sum256(layer)
	layerHex := hex.EncodeToString(layerSum[:])
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      time.Unix(0, 0).UTC(),
		"config": map[string]any{
			"Env":        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			"Entrypoint": entrypoint,
			"WorkingDir": "/",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + layerHex}},
	})
	if err != nil {
		return err
	}
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	layerName := layerHex + "/layer.tar"
	manifest, err := json.Marshal([]map[string]any{{
		"Config":   configName,
		"RepoTags": []string{ref},
		"Layers":   []string{layerName},
	}})
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: layerHex + "/", Mode: 0o755}); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{layerName, layer}, {configName, config}, {"manifest.json", manifest}} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.data))}); err != nil {
			return err
		}
		if _, err := tw.Write(f.data); err != nil {
			return err
		}
	}
	return tw.Close()
}

// buildLayer makes the layer tar: entries and their parent directories,
// sorted (a directory before what it holds), owned by root.
func buildLayer(entries []layerEntry) ([]byte, error) {
	byPath := map[string]layerEntry{}
	for _, e := range entries {
		p := strings.TrimPrefix(path.Clean("/"+e.path), "/")
		if p == "" {
			return nil, fmt.Errorf("image path %q", e.path)
		}
		e.path = p
		byPath[p] = e
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := byPath[d]; !ok {
				byPath[d] = layerEntry{path: d, dir: true}
			}
		}
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		e := byPath[p]
		h := &tar.Header{Name: p, Mode: e.mode, Uid: 0, Gid: 0}
		var data []byte
		switch {
		case e.dir:
			h.Typeflag, h.Name = tar.TypeDir, p+"/"
			if h.Mode == 0 {
				h.Mode = 0o755
			}
		case e.link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, e.link, 0o777
		case e.hostFile != "":
			fi, err := os.Stat(e.hostFile)
			if err != nil {
				return nil, err
			}
			if data, err = os.ReadFile(e.hostFile); err != nil {
				return nil, err
			}
			h.Typeflag, h.Mode = tar.TypeReg, int64(fi.Mode().Perm())
		default:
			data = e.data
			h.Typeflag = tar.TypeReg
			if h.Mode == 0 {
				h.Mode = 0o644
			}
		}
		h.Size = int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
