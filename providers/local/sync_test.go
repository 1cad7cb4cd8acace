package local

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestCommitSyncsTheFolder (issue 15 item 7): a commit renames its pending
// file into place and then syncs the folder, and a folder the writer
// creates is synced into its parent, so a committed file (or ledger part)
// cannot vanish on power loss while a later one survives.
func TestCommitSyncsTheFolder(t *testing.T) {
	var synced []string
	old := syncDir
	syncDir = func(dir string) error { synced = append(synced, dir); return old(dir) }
	defer func() { syncDir = old }()
	root := t.TempDir()
	final := filepath.Join(root, "run_id=r1", "sub", "part-0.parquet")
	w, err := Backend{}.Create(context.Background(), final)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	created := append([]string{}, synced...)
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(root, "run_id=r1"), root}
	if !slices.Equal(created, want) {
		t.Errorf("folders synced on create: %v, want the parents of the new folders %v", created, want)
	}
	if last := synced[len(synced)-1]; last != filepath.Dir(final) || len(synced) != len(created)+1 {
		t.Errorf("folders synced on commit: %v, want %s last", synced[len(created):], filepath.Dir(final))
	}
}

// TestCleanTemps (issue 15 item 8): the pending files a killed writer left
// are removed, committed files and foreign hidden files are not.
func TestCleanTemps(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	w, err := Backend{}.Create(ctx, filepath.Join(root, "a", "part-0.parquet"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = w.Write([]byte("pending")) // never committed: a killed run
	c, err := Backend{}.Create(ctx, filepath.Join(root, "a", "part-1.parquet"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "a", ".keep.tmp"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	n, err := Backend{}.CleanTemps(ctx, root)
	if err != nil || n != 1 {
		t.Fatalf("CleanTemps: %d, %v; want 1", n, err)
	}
	left, _ := os.ReadDir(filepath.Join(root, "a"))
	var names []string
	for _, e := range left {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{".keep.tmp", "part-1.parquet"}) {
		t.Errorf("left: %v", names)
	}
	if n, err := (Backend{}).CleanTemps(ctx, filepath.Join(root, "missing")); n != 0 || err != nil {
		t.Errorf("missing root: %d, %v", n, err)
	}
}
