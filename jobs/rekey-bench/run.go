package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"rekey/schemas"
	"rekey/transforms/ledger"
)

// dataset is a generated source dataset: a DEK table and record files.
type dataset struct {
	Name    string
	Dir     string
	Data    string
	DEKs    string
	Cell    int
	Files   int
	Records int // per file
	NumDEKs int
	// Format and FormatOptions are the cell format (schemas/format); ""
	// is rekey-v1, what rekey gen writes.
	Format        string
	FormatOptions map[string]string
}

// ColumnKeys reports whether the wrapped keys are in a column of the
// records (format keys: column) instead of a DEK table.
func (d *dataset) ColumnKeys() bool { return d.FormatOptions["keys"] == "column" }

// CellKeys reports whether every cell carries its own wrapped DEK (Tink's
// envelope): no DEK table on either side, and a rewrap rewrites the cells
// into target.data.
func (d *dataset) CellKeys() bool { return d.Format == tinkFormat }

func (d *dataset) payloadBytes() int64 { return int64(d.Files) * int64(d.Records) * int64(d.Cell) }
func (d *dataset) records() int64      { return int64(d.Files) * int64(d.Records) }

func (d *dataset) files() ([]string, error) {
	m, err := filepath.Glob(filepath.Join(d.Data, "*.parquet"))
	if err != nil {
		return nil, err
	}
	sort.Strings(m)
	if len(m) != d.Files {
		return nil, fmt.Errorf("dataset %s: %d record files, want %d", d.Name, len(m), d.Files)
	}
	return m, nil
}

// filesInto returns d's record files and makes out, a scratch folder for
// a program's output; done removes it.
func (d *dataset) filesInto(out string) (files []string, done func(), err error) {
	if files, err = d.files(); err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, nil, err
	}
	return files, func() { _ = os.RemoveAll(out) }, nil
}

// rowGroupRows keeps a generated row group near 64 MiB of payload, as a
// real writer would, whatever the cell size.
func rowGroupRows(cell int) int {
	return max(1, min(10000, (64<<20)/max(cell, 1)))
}

// generate makes ds with `rekey gen`, unless a previous bench run left it
// with the same arguments.
func generate(ctx context.Context, rekey string, ds *dataset, workers int, logs string) error {
	args := []string{"gen", "--deks", ds.DEKs, "--kek", sourceKEK(), "--num-deks", strconv.Itoa(ds.NumDEKs),
		"--files", strconv.Itoa(ds.Files), "--workers", strconv.Itoa(workers)}
	if ds.Files > 0 {
		args = append(args, "--data", ds.Data, "--records", strconv.Itoa(ds.Records), "--record-size", strconv.Itoa(ds.Cell),
			"--row-group", strconv.Itoa(rowGroupRows(ds.Cell)))
	}
	if stampMatches(ds.Dir, args) {
		fmt.Fprintf(os.Stderr, "  dataset %s: reusing %s\n", ds.Name, ds.Dir)
		return nil
	}
	if err := os.RemoveAll(ds.Dir); err != nil {
		return err
	}
	if err := os.MkdirAll(ds.Dir, 0o755); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "  dataset %s: rekey %s\n", ds.Name, strings.Join(args, " "))
	res, err := runChild(ctx, rekey, args, filepath.Join(logs, "gen-"+ds.Name+".log"))
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "  dataset %s: %s\n", ds.Name, res.Wall.Round(time.Millisecond))
	return writeStamp(ds.Dir, args)
}

// childResult is one subprocess run.
type childResult struct {
	Wall     time.Duration
	Pipeline time.Duration // rekey's own "in X" (beam.Run start to end), 0 if not printed
	MaxRSS   int64         // bytes, from the child's rusage (wait4)
	CPU      time.Duration // user + system time of the child (wait4)
	Stdout   string
}

var tookRe = regexp.MustCompile(`(?m)^rekey run \S+ \(\w+\): \w+ in (\S+)$`)

// runChild runs bin with args, logging its output, and returns its wall
// time, CPU time and peak RSS (ru_maxrss of the wait4 that reaped it, taken by a
// `rekey-bench spawn` helper: see spawn.go for why).
func runChild(ctx context.Context, bin string, args []string, logPath string) (childResult, error) {
	return runChildEnv(ctx, bin, args, nil, logPath)
}

// runChildEnv is runChild with the child's environment (nil: this
// process's).
func runChildEnv(ctx context.Context, bin string, args, env []string, logPath string) (childResult, error) {
	var res childResult
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return res, err
	}
	log, err := os.Create(logPath)
	if err != nil {
		return res, err
	}
	defer log.Close()
	fmt.Fprintf(log, "$ %s %s\n", bin, strings.Join(args, " "))
	var stdout strings.Builder
	self, err := os.Executable()
	if err != nil {
		return res, err
	}
	rssFile := logPath + ".maxrss"
	os.Remove(rssFile)
	cmd := exec.CommandContext(ctx, self, append([]string{"spawn", rssFile, bin}, args...)...)
	cmd.Env = env
	cmd.Stdout = &teeWriter{&stdout, log}
	cmd.Stderr = log
	start := time.Now()
	err = cmd.Run()
	res.Wall = time.Since(start)
	res.Stdout = stdout.String()
	if b, rerr := os.ReadFile(rssFile); rerr == nil {
		f := strings.Fields(string(b))
		if len(f) > 0 {
			res.MaxRSS, _ = strconv.ParseInt(f[0], 10, 64)
		}
		if len(f) > 1 {
			ns, _ := strconv.ParseInt(f[1], 10, 64)
			res.CPU = time.Duration(ns)
		}
		os.Remove(rssFile)
	}
	if err != nil {
		return res, fmt.Errorf("%s %s: %v (log: %s)", filepath.Base(bin), args[0], err, logPath)
	}
	if m := tookRe.FindStringSubmatch(res.Stdout); m != nil {
		res.Pipeline, _ = time.ParseDuration(m[1])
	}
	return res, nil
}

type teeWriter struct {
	a *strings.Builder
	b *os.File
}

func (t *teeWriter) Write(p []byte) (int, error) {
	t.a.Write(p)
	return t.b.Write(p)
}

// rekeyRun is one `rekey run`.
type rekeyRun struct {
	Mode, Runner string
	Workers      int // 0: rekey's default
	TargetWrap   string
	// SourceKEK and TargetKEK replace the bench's SoftHSM2 keys when set
	// (the KMS section's awskms: references).
	SourceKEK, TargetKEK string
	// Extra are more flags for `rekey run` (e.g. --hsm-rate).
	Extra []string
	// Path, when set, is the rewrap path (schemas.PathRekey or
	// PathCustodian) every DEK row of the run's ledger must show: a run
	// that took the other path is an error, not a figure.
	Path string
}

// runRekey runs one migration of ds in a scratch folder and removes its
// output afterwards. It returns the child's figures and the run manifest.
func runRekey(ctx context.Context, rekey string, ds *dataset, r rekeyRun, scratch, logs, runID string) (childResult, *schemas.Manifest, error) {
	out := filepath.Join(scratch, runID)
	if err := os.RemoveAll(out); err != nil {
		return childResult{}, nil, err
	}
	defer os.RemoveAll(out)
	srcKEK, dstKEK := sourceKEK(), targetKEK()
	if r.SourceKEK != "" {
		srcKEK = r.SourceKEK
	}
	if r.TargetKEK != "" {
		dstKEK = r.TargetKEK
	}
	args := []string{"run", "--mode", r.Mode, "--run-id", runID, "--runner", r.Runner, "--progress", "-1s",
		"--source-kek", srcKEK, "--target-kek", dstKEK, "--ledger", filepath.Join(out, "ledger")}
	if !ds.ColumnKeys() && !ds.CellKeys() {
		args = append(args, "--source-deks", ds.DEKs)
	}
	if !(ds.ColumnKeys() && r.Mode == schemas.ModeRewrap) && !ds.CellKeys() {
		// A rewrap of keys kept in a column rewrites that column in
		// target.data and has no target DEK table.
		args = append(args, "--target-deks", filepath.Join(out, "deks"))
	}
	if r.TargetWrap != "" {
		args = append(args, "--target-wrap", r.TargetWrap)
	}
	if r.Mode == schemas.ModeReencrypt || ds.ColumnKeys() || ds.CellKeys() {
		args = append(args, "--source-data", ds.Data, "--target-data", filepath.Join(out, "data"))
	}
	if r.Workers > 0 {
		args = append(args, "--workers", strconv.Itoa(r.Workers))
	}
	if ds.Format != "" {
		// The cell format has no flag: it goes in a job file, and the
		// flags above fill in the rest.
		if err := os.MkdirAll(out, 0o755); err != nil {
			return childResult{}, nil, err
		}
		job := filepath.Join(out, "job.yaml")
		doc := map[string]any{"source": map[string]any{"format": ds.Format, "format_options": ds.FormatOptions}}
		if ds.CellKeys() && r.Mode == schemas.ModeReencrypt {
			// Tink cells stay Tink cells (rekey-v1 cells carry no key).
			doc["target"] = map[string]any{"format": ds.Format, "format_options": ds.FormatOptions}
		}
		b, err := yaml.Marshal(doc)
		if err != nil {
			return childResult{}, nil, err
		}
		if err := os.WriteFile(job, b, 0o644); err != nil {
			return childResult{}, nil, err
		}
		args = append(args, "--job", job)
	}
	args = append(args, r.Extra...)
	res, err := runChild(ctx, rekey, args, filepath.Join(logs, runID+".log"))
	if err != nil {
		return res, nil, err
	}
	b, err := os.ReadFile(filepath.Join(out, "ledger", "run_id="+runID, "_manifest.json"))
	if err != nil {
		return res, nil, fmt.Errorf("run %s: %w", runID, err)
	}
	var m schemas.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return res, nil, err
	}
	if m.Totals.Failed > 0 {
		return res, &m, fmt.Errorf("run %s: %d failed (log: %s)", runID, m.Totals.Failed, filepath.Join(logs, runID+".log"))
	}
	if r.Path != "" {
		if err := checkLedgerPath(ctx, filepath.Join(out, "ledger"), runID, r.Path); err != nil {
			return res, &m, err
		}
	}
	return res, &m, nil
}

// checkLedgerPath checks that every DEK row of a run's ledger says it was
// rewrapped on path (schemas.PathRekey, PathCustodian).
func checkLedgerPath(ctx context.Context, root, runID, path string) error {
	var n int64
	err := ledger.Scan(ctx, root, runID, false, func(rows []schemas.LedgerRow) error {
		for i := range rows {
			if rows[i].Unit != schemas.UnitDEK {
				continue
			}
			if rows[i].Path != path {
				return fmt.Errorf("run %s: dek_id %q was rewrapped on path %q, want %q", runID, rows[i].DEKID, rows[i].Path, path)
			}
			n++
		}
		return nil
	})
	if err == nil && n == 0 {
		err = fmt.Errorf("run %s: no DEK rows in its ledger", runID)
	}
	return err
}
