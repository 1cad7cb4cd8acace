// Package local is the storage backend for plain filesystem paths. Writes
// go to a hidden temporary file beside the target, are fsynced, and are
// renamed into place on Commit (atomic on POSIX filesystems).
//
// Limits: rename is atomic only within one filesystem; the temporary file
// is always made in the target's directory for that reason.
package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"

	"rekey/providers/storage"
)

func init() { storage.Register("", Backend{}) }

// Backend implements storage.Backend on the local filesystem.
type Backend struct{}

// List implements storage.Backend.
func (Backend) List(_ context.Context, root string) ([]string, error) {
	st, err := os.Stat(root)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("list %s: %w (check the path)", root, storage.ErrNotFound)
		}
		return nil, fmt.Errorf("list %s: %w", root, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("list %s: not a directory (give the folder that holds the Parquet files)", root)
	}
	var out []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if p != root && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		out = append(out, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", root, err)
	}
	sort.Strings(out)
	return out, nil
}

type file struct {
	*os.File
	size int64
}

func (f file) Size() int64 { return f.size }

// Open implements storage.Backend.
func (Backend) Open(_ context.Context, path string) (storage.File, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("open %s: %w", path, storage.ErrNotFound)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return file{f, st.Size()}, nil
}

type writer struct {
	f     *os.File
	final string
	done  bool
}

// Create implements storage.Backend.
func (Backend) Create(_ context.Context, path string) (storage.Writer, error) {
	dir := filepath.Dir(path)
	if err := mkdirDurable(dir); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	var r [6]byte
	_, _ = rand.Read(r[:])
	tmp := filepath.Join(dir, "."+filepath.Base(path)+".rekey-"+hex.EncodeToString(r[:])+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	return &writer{f: f, final: path}, nil
}

func (w *writer) Write(p []byte) (int, error) { return w.f.Write(p) }

func (w *writer) Commit() error {
	if w.done {
		return errors.New("commit: writer already finished")
	}
	w.done = true
	tmp := w.f.Name()
	if err := w.f.Sync(); err != nil {
		w.f.Close()
		os.Remove(tmp)
		return fmt.Errorf("commit %s: %w", w.final, err)
	}
	if err := w.f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("commit %s: %w", w.final, err)
	}
	if err := os.Rename(tmp, w.final); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("commit %s: %w", w.final, err)
	}
	// The rename is durable only once its folder is synced: without it a
	// power loss can lose this commit while later ones (a ledger part
	// after its target file) survive.
	if err := syncDir(filepath.Dir(w.final)); err != nil {
		return fmt.Errorf("commit %s: %w", w.final, err)
	}
	return nil
}

// mkdirDurable creates dir and its missing parents, and syncs the folder
// above each new one, so that a committed file's folder survives a power
// loss too.
func mkdirDurable(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	var created []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil || d == filepath.Dir(d) {
			break
		}
		created = append(created, d)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, d := range created {
		if err := syncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

func (w *writer) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	w.f.Close()
	return os.Remove(w.f.Name())
}

// CreateExclusive implements storage.ExclusiveCreator: the bytes go to a
// synced temporary file that is hard-linked to path, which fails if path
// exists, so a reader never sees a partial object.
func (b Backend) CreateExclusive(ctx context.Context, path string, body []byte) error {
	w, err := b.Create(ctx, path)
	if err != nil {
		return err
	}
	lw := w.(*writer)
	defer lw.Abort()
	if _, err := lw.f.Write(body); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := lw.f.Sync(); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := os.Link(lw.f.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create %s: %w", path, storage.ErrExists)
		}
		return fmt.Errorf("create %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

// Remove implements storage.Remover.
func (Backend) Remove(_ context.Context, path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// tempName matches the pending files Create makes: "." + base + ".rekey-"
// + 12 hex digits + ".tmp".
var tempName = regexp.MustCompile(`^\..+\.rekey-[0-9a-f]{12}\.tmp$`)

// CleanTemps implements storage.TempCleaner: it removes the pending files
// of killed writers under root (a missing root has none).
func (Backend) CleanTemps(_ context.Context, root string) (int, error) {
	n := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() && tempName.MatchString(d.Name()) {
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

// syncDir makes a directory's entries (a rename or link just done)
// durable. A variable so tests can see the calls.
var syncDir = func(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync folder %s: %w", dir, err)
	}
	return nil
}

// Exists implements storage.Backend.
func (Backend) Exists(_ context.Context, path string) (bool, error) {
	_, err := os.Stat(path)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, err
}

// Check implements storage.Checker: a location to read must be a folder; a
// location to write must be (or be creatable in) a writable folder. It
// creates nothing.
func (Backend) Check(_ context.Context, loc string, write bool) error {
	p := filepath.Clean(loc)
	for {
		st, err := os.Stat(p)
		if err == nil {
			if !st.IsDir() {
				return fmt.Errorf("%s: %s is not a folder", loc, p)
			}
			if write && syscall.Access(p, 2 /* W_OK */) != nil {
				return fmt.Errorf("%s: folder %s is not writable by this user", loc, p)
			}
			return nil
		}
		if !write {
			return fmt.Errorf("%s: %w (check the path)", loc, storage.ErrNotFound)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return fmt.Errorf("%s: no existing parent folder", loc)
		}
		p = parent
	}
}
