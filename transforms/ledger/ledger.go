// Package ledger is the migration ledger's one home: where a run's rows,
// manifest and definition live on storage, how a unit's part and its
// retried attempts are named, how rows are written (one committed Parquet
// part per unit) and read back (each unit's last attempt, or the whole
// history), streamed so a ledger of millions of rows need not fit in
// memory. The row type and the manifest body are schemas.LedgerRow and
// schemas.Manifest; docs/FORMAT.md section 3 is the layout's contract. It
// is Beam-free: DoFns, the planner and the CLI all use it.
//
// Layout, under the job's ledger folder:
//
//	run_id=<id>/part-<kind>-<unit>.parquet            a unit's rows
//	run_id=<id>/part-<kind>-<unit>.attempt-<n>.parquet a --resume's retry of it
//	run_id=<id>/_manifest.json                         the run's outcome
//	run_id=<id>/_run.json                              the run's definition
//
// Limits: no locking; one run id is written by one run at a time (the run
// definition and the planner enforce it).
package ledger

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/zstd"

	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/transforms/rowio"
)

// RunDir is the Hive-style folder of one run's ledger.
func RunDir(root, runID string) string { return storage.Join(root, "run_id="+runID) }

// ManifestPath is where a run's manifest goes.
func ManifestPath(root, runID string) string {
	return storage.Join(RunDir(root, runID), "_manifest.json")
}

// DefinitionPath is where a run's definition (pipeline/rundef.go) goes.
func DefinitionPath(root, runID string) string { return storage.Join(RunDir(root, runID), "_run.json") }

// ReportPath is where a report named name (e.g. "_verify.json",
// "_audit.json") about a run goes.
func ReportPath(root, runID, name string) string { return storage.Join(RunDir(root, runID), name) }

// PartPath is where the rows of one unit go: kind says what the unit is
// ("data", "deks", "keys"), rel names it (a path relative to its root), so a
// retried bundle overwrites its part instead of duplicating rows.
func PartPath(root, runID, kind, rel string) string {
	return storage.Join(RunDir(root, runID), "part-"+kind+"-"+UnitName(rel)+".parquet")
}

// UnitName turns a relative path into a flat, readable, collision-free
// name: the path with separators replaced, plus a short hash of the exact
// path.
func UnitName(rel string) string {
	h := sha256.Sum256([]byte(rel))
	flat := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '.':
			return r
		}
		return '_'
	}, strings.TrimSuffix(rel, ".parquet"))
	if len(flat) > 80 {
		flat = flat[len(flat)-80:]
	}
	return flat + "-" + hex.EncodeToString(h[:6])
}

// AttemptPart is the part of a unit's n-th attempt (1 is the part itself):
// a --resume that retries a unit writes the next attempt, keeping the
// earlier rows; readers take the highest attempt.
func AttemptPart(part string, n int) string {
	if n <= 1 {
		return part
	}
	base, query := storage.SplitQuery(part)
	return strings.TrimSuffix(base, ".parquet") + fmt.Sprintf(".attempt-%d.parquet", n) + query
}

// LastAttempt finds the newest committed attempt of a unit's part and its
// number (0 if none).
func LastAttempt(ctx context.Context, part string) (string, int, error) {
	last, n := "", 0
	for i := 1; ; i++ {
		p := AttemptPart(part, i)
		ok, err := storage.Exists(ctx, p)
		if err != nil {
			return "", 0, err
		}
		if !ok {
			return last, n, nil
		}
		last, n = p, i
	}
}

// Writer streams one unit's rows into its part; Commit makes the part
// visible (the unit's commit marker), Abort leaves nothing.
type Writer = rowio.Writer[schemas.LedgerRow]

// Create starts the part at path.
func Create(ctx context.Context, path string) (*Writer, error) {
	return rowio.Create[schemas.LedgerRow](ctx, path, writerOptions...)
}

// writerOptions make a ledger part cheap to write: a row per record is
// written at the pace of the records themselves. zstd at its fastest level
// writes 100,000 typical record rows about 3x faster than snappy and
// smaller (66 against 81 bytes a row, with the dictionary-encoded columns
// of schemas.LedgerRow), and min/max page bounds of columns unique per row
// (record_id, checksum) filter nothing.
var writerOptions = []parquet.WriterOption{
	parquet.Compression(&zstd.Codec{Level: zstd.SpeedFastest}),
	parquet.SkipPageBounds("record_id"),
	parquet.SkipPageBounds("checksum"),
}

// WritePart commits rows as one part.
func WritePart(ctx context.Context, path string, rows []schemas.LedgerRow) error {
	w, err := Create(ctx, path)
	if err != nil {
		return err
	}
	if err := w.Write(rows); err != nil {
		w.Abort()
		return err
	}
	return w.Commit()
}

// scanBatch is how many rows Scan hands over at a time.
const scanBatch = 4096

// Scan streams one run's rows to fn, part by part, a batch at a time (fn
// must not keep the slice): each unit's last attempt, or with history
// every attempt. Memory stays at one batch whatever the ledger's size.
func Scan(ctx context.Context, root, runID string, history bool, fn func(rows []schemas.LedgerRow) error) error {
	dir := RunDir(root, runID)
	files, err := storage.List(ctx, dir)
	if err != nil {
		return fmt.Errorf("ledger of run %q: %w", runID, err)
	}
	if !history {
		files = lastAttempts(files)
	}
	buf := make([]schemas.LedgerRow, scanBatch)
	for _, rel := range files {
		if !strings.HasSuffix(rel, ".parquet") {
			continue
		}
		if err := scanPart(ctx, storage.Join(dir, rel), buf, fn); err != nil {
			return err
		}
	}
	return nil
}

// Read returns one run's rows as it stands: each unit's last attempt.
// Use Scan for a ledger that may be large.
func Read(ctx context.Context, root, runID string) ([]schemas.LedgerRow, error) {
	return readAll(ctx, root, runID, false)
}

// ReadHistory returns every row of every attempt of one run.
func ReadHistory(ctx context.Context, root, runID string) ([]schemas.LedgerRow, error) {
	return readAll(ctx, root, runID, true)
}

func readAll(ctx context.Context, root, runID string, history bool) ([]schemas.LedgerRow, error) {
	var all []schemas.LedgerRow
	err := Scan(ctx, root, runID, history, func(rows []schemas.LedgerRow) error {
		all = append(all, rows...)
		return nil
	})
	return all, err
}

// ReadPart returns the rows of one part.
func ReadPart(ctx context.Context, path string) ([]schemas.LedgerRow, error) {
	var all []schemas.LedgerRow
	err := scanPart(ctx, path, make([]schemas.LedgerRow, scanBatch), func(rows []schemas.LedgerRow) error {
		all = append(all, rows...)
		return nil
	})
	return all, err
}

func scanPart(ctx context.Context, path string, buf []schemas.LedgerRow, fn func([]schemas.LedgerRow) error) error {
	f, err := storage.Open(ctx, path)
	if err != nil {
		return err
	}
	defer f.Close()
	pf, err := parquet.OpenFile(f, f.Size())
	if err != nil {
		return fmt.Errorf("read ledger part %s: %w", path, err)
	}
	r := parquet.NewGenericReader[schemas.LedgerRow](pf)
	defer r.Close()
	for {
		clear(buf)
		n, err := r.Read(buf)
		if n > 0 {
			if ferr := fn(buf[:n]); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read ledger part %s: %w", path, err)
		}
	}
}

// lastAttempts keeps, of the part files of a run, each unit's highest
// attempt (see AttemptPart).
func lastAttempts(files []string) []string {
	best := map[string]int{}
	name := map[string]string{}
	var order []string
	for _, f := range files {
		base, n := f, 1
		if i := strings.LastIndex(f, ".attempt-"); i >= 0 && strings.HasSuffix(f, ".parquet") {
			if k, err := strconv.Atoi(strings.TrimSuffix(f[i+len(".attempt-"):], ".parquet")); err == nil && k > 1 {
				base, n = f[:i]+".parquet", k
			}
		}
		if _, seen := best[base]; !seen {
			order = append(order, base)
		}
		if n >= best[base] {
			best[base], name[base] = n, f
		}
	}
	out := make([]string, 0, len(order))
	for _, b := range order {
		out = append(out, name[b])
	}
	return out
}

// WriteJSON writes v, indented, as one object at path (manifests, reports).
func WriteJSON(ctx context.Context, path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return rowio.OutputErr(path, storage.Put(ctx, path, append(b, '\n')))
}

// ReadManifest reads one run's manifest.
func ReadManifest(ctx context.Context, root, runID string) (*schemas.Manifest, error) {
	path := ManifestPath(root, runID)
	var m schemas.Manifest
	if err := ReadJSON(ctx, path, &m); err != nil {
		return nil, fmt.Errorf("run %s: %w", runID, err)
	}
	return &m, nil
}

// maxJSON caps what ReadJSON reads: manifests and reports are small.
const maxJSON = 64 << 20

// ReadJSON reads the JSON object at path into v.
func ReadJSON(ctx context.Context, path string, v any) error {
	b, err := storage.ReadAll(ctx, path, maxJSON)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	return nil
}
