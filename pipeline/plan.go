package pipeline

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"sort"

	"github.com/parquet-go/parquet-go"

	"rekey/providers/keys"
	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/transforms"
)

// Report is the outcome of a dry run.
type Report struct {
	Checks      []keys.Check
	DEKFiles    int
	DEKs        int
	KEKs        map[string]int // kek reference -> DEKs wrapped by it
	Wraps       map[string]int
	DataFiles   int
	OtherFiles  int // files under source.data that are not *.parquet (ignored)
	Records     int64
	DataBytes   int64
	HSMOps      int64
	HSMOpsNote  string
	DuplicateID []string
}

// Failed reports whether any check failed.
func (r *Report) Failed() bool {
	for _, c := range r.Checks {
		if !c.OK {
			return true
		}
	}
	return false
}

func (r *Report) add(ok bool, name, format string, a ...any) {
	r.Checks = append(r.Checks, keys.Check{Name: name, OK: ok, Info: fmt.Sprintf(format, a...)})
}

func (r *Report) warn(name, format string, a ...any) {
	r.Checks = append(r.Checks, keys.Check{Name: name, OK: true, Warn: true, Info: fmt.Sprintf(format, a...)})
}

// Plan checks everything a run of j needs without writing anything: the
// DEK table reads and has no conflicting duplicates, every DEK names the
// configured source KEK, both KEKs open and allow the operations needed
// (with a real unwrap of one DEK and a target round trip), the record files
// have the configured columns, and the run's ledger is not already there
// (unless resuming). scanData reads every record file's footer for counts.
func Plan(ctx context.Context, j *Job, scanData bool) *Report {
	r := &Report{KEKs: map[string]int{}, Wraps: map[string]int{}}
	spec := j.Spec()

	// Every location: reachable, the sources readable, the targets writable.
	for _, l := range []struct {
		name, loc string
		write     bool
	}{{"source.data", j.Source.Data, false}, {"source.deks", j.Source.DEKs, false},
		{"target.data", j.Target.Data, true}, {"target.deks", j.Target.DEKs, true}, {"ledger", j.Ledger, true}} {
		if l.loc == "" || (l.name == "source.data" && j.Mode == schemas.ModeRewrap) {
			continue
		}
		if err := storage.Check(ctx, l.loc, l.write); err != nil {
			r.add(false, l.name, "%v", err)
		}
	}

	// Keys first: a wrong PIN or label is the most common mistake.
	src, srcErr := transforms.OpenKEK(ctx, spec.SourceKEK, spec.SourceWrap, 2)
	if srcErr != nil {
		r.add(false, "source KEK", "%v", srcErr)
	} else {
		r.add(true, "source KEK", "%s opened (module loaded, token found, PIN accepted, key found)", src.URI())
		if p, ok := src.(keys.Preflighter); ok {
			r.Checks = append(r.Checks, p.Preflight(ctx, false, true)...)
		}
	}
	dst, dstErr := transforms.OpenKEK(ctx, spec.TargetKEK, spec.TargetWrap, 2)
	if dstErr != nil {
		r.add(false, "target KEK", "%v", dstErr)
	} else {
		r.add(true, "target KEK", "%s opened, wrap %s", dst.URI(), dst.Mechanism())
		if p, ok := dst.(keys.Preflighter); ok {
			r.Checks = append(r.Checks, p.Preflight(ctx, true, true)...)
		}
	}

	// The DEK table, streamed: only a short hash per dek_id is kept, so a
	// table of millions of DEKs does not have to fit in memory.
	type seenDEK struct {
		h    [8]byte
		file int32
	}
	seen := map[string]seenDEK{}
	fileIdx := map[string]int32{}
	conflict := map[string]bool{}
	invalid, foreign := 0, 0
	var firstInvalid string
	var probe *schemas.DEKRow // one DEK of the source KEK, for a real unwrap
	err := transforms.ScanDEKTable(ctx, spec.SourceDEKs, func(file string, rows []schemas.DEKRow) error {
		fi, ok := fileIdx[file]
		if !ok {
			fi = int32(len(fileIdx))
			fileIdx[file] = fi
		}
		for i := range rows {
			d := &rows[i]
			r.DEKs++
			r.KEKs[d.KEK]++
			r.Wraps[d.Wrap]++
			if err := d.Validate(); err != nil {
				invalid++
				if firstInvalid == "" {
					firstInvalid = err.Error()
				}
				continue
			}
			h := sha256.Sum256(d.Wrapped)
			short := [8]byte(h[:8])
			// A dek_id twice in one file with the same wrapped key is a
			// harmless repeat (skipped); anything else is a conflict: two
			// files would each produce a target row for it.
			if prev, ok := seen[d.DEKID]; ok && (prev.h != short || prev.file != fi) {
				conflict[d.DEKID] = true
			}
			seen[d.DEKID] = seenDEK{short, fi}
			if src != nil && !transforms.KEKMatches(src, d.KEK) {
				foreign++
			} else if src != nil && probe == nil {
				c := *d
				c.Wrapped = bytes.Clone(d.Wrapped)
				probe = &c
			}
		}
		return nil
	}, &r.DEKFiles)
	if err != nil {
		r.add(false, "source DEK table", "%v", err)
	} else {
		r.add(true, "source DEK table", "%d DEKs in %d files", r.DEKs, r.DEKFiles)
		if r.DEKs == 0 {
			r.warn("source DEK table", "no DEKs: the run will have nothing to migrate")
		}
		if invalid > 0 {
			r.warn("DEK rows", "%d malformed rows will become failed ledger rows (first: %s)", invalid, firstInvalid)
		}
		if foreign > 0 && foreign == r.DEKs-invalid {
			r.add(false, "DEK KEKs", "none of the %d DEKs is wrapped by source.kek %s; the table references %v (is source.kek the right key?)", foreign, src.URI(), keysOf(r.KEKs))
		} else if foreign > 0 {
			r.warn("DEK KEKs", "%d DEKs are wrapped by a KEK other than source.kek; they will fail (KEKs referenced: %v)", foreign, keysOf(r.KEKs))
		}
		for id := range conflict {
			r.DuplicateID = append(r.DuplicateID, id)
		}
		sort.Strings(r.DuplicateID)
		if len(r.DuplicateID) > 0 {
			r.add(false, "DEK table duplicates", "%d dek_ids appear more than once with different wrapped keys or in different files (first: %q); fix the table: which one is right cannot be decided here", len(r.DuplicateID), r.DuplicateID[0])
		}
		// A real unwrap proves the source KEK is the one these DEKs use.
		if probe != nil {
			dek, err := src.Unwrap(ctx, probe.DEKID, probe.Wrap, probe.Wrapped)
			if err != nil {
				r.add(false, "test unwrap", "DEK %q: %v", probe.DEKID, err)
			} else {
				dek.Zero()
				r.add(true, "test unwrap", "DEK %q unwrapped by the source KEK (%s)", probe.DEKID, probe.Wrap)
			}
		}
	}

	if j.Mode == schemas.ModeReencrypt {
		planData(ctx, j, r, scanData)
	}

	// A re-encrypt run replaces a target DEK table's files; records an
	// earlier run wrote would lose their DEKs. Only a resumed or
	// incremental run (per-run DEK folders) may add to an existing table.
	if j.Mode == schemas.ModeReencrypt && !j.Resume && !j.Incremental {
		if files, err := storage.List(ctx, j.Target.DEKs); err == nil && len(files) > 0 {
			r.add(false, "target.deks", "%s already holds a DEK table (%d files) that earlier output may depend on; use an empty target, --resume to finish that run, or --incremental", j.Target.DEKs, len(files))
		}
	}

	// The ledger of this run.
	if ok, _ := storage.Exists(ctx, transforms.ManifestPath(spec.Ledger, spec.RunID)); ok && !j.Resume {
		r.add(false, "ledger", "run %q already finished (a manifest is at %s); choose a new --run-id, or --resume to re-check it", j.RunID, transforms.ManifestPath(spec.Ledger, spec.RunID))
	} else if parts, err := storage.List(ctx, transforms.RunLedgerDir(spec.Ledger, spec.RunID)); err == nil && len(parts) > 0 && !j.Resume {
		r.add(false, "ledger", "run %q has %d ledger parts already (an interrupted run?): add --resume to finish it, or choose a new --run-id", j.RunID, len(parts))
	} else {
		r.add(true, "ledger", "%s", transforms.RunLedgerDir(spec.Ledger, spec.RunID))
	}

	switch j.Mode {
	case schemas.ModeRewrap:
		r.HSMOps = int64(r.DEKs) * 3
		r.HSMOpsNote = "per DEK: source unwrap, target wrap, target unwrap to verify (RSA wraps are done with the public key, off the HSM)"
	case schemas.ModeReencrypt:
		r.HSMOps = int64(r.DEKs) * 4
		r.HSMOpsNote = "per DEK: source unwrap, random from the target HSM, target wrap, target unwrap to verify; records cost no HSM work (each further worker process unwraps each DEK it meets once more on each side)"
	}
	return r
}

func planData(ctx context.Context, j *Job, r *Report, scan bool) {
	files, err := storage.List(ctx, j.Source.Data)
	if err != nil {
		r.add(false, "source data", "%v", err)
		return
	}
	var data []string
	for _, f := range files {
		if len(f) > 8 && f[len(f)-8:] == ".parquet" {
			data = append(data, f)
		} else {
			r.OtherFiles++
		}
	}
	r.DataFiles = len(data)
	if len(data) == 0 {
		r.warn("source data", "no .parquet files under %s", j.Source.Data)
		return
	}
	bad := 0
	var firstBad string
	for i, rel := range data {
		if !scan && i > 0 {
			break
		}
		path := storage.Join(j.Source.Data, rel)
		f, err := storage.Open(ctx, path)
		if err != nil {
			bad++
			firstBad = err.Error()
			continue
		}
		pf, err := parquet.OpenFile(f, f.Size(), parquet.SkipPageIndex(true), parquet.SkipBloomFilters(true))
		if err != nil {
			bad++
			if firstBad == "" {
				firstBad = fmt.Sprintf("%s: not a readable Parquet file (%v)", path, err)
			}
			f.Close()
			continue
		}
		r.Records += pf.NumRows()
		r.DataBytes += f.Size()
		for _, c := range append(append([]string{}, j.Columns.Encrypted...), j.Columns.DEKID, j.Columns.RecordID) {
			if _, ok := pf.Schema().Lookup(c); !ok {
				bad++
				if firstBad == "" {
					firstBad = fmt.Sprintf("%s: no column %q", path, c)
				}
				break
			}
		}
		f.Close()
	}
	if scan {
		r.add(true, "source data", "%d files, %d records, %d bytes", r.DataFiles, r.Records, r.DataBytes)
	} else {
		r.add(true, "source data", "%d files (first file's schema checked)", r.DataFiles)
	}
	if r.OtherFiles > 0 {
		r.warn("source data", "%d files that are not .parquet are ignored", r.OtherFiles)
	}
	if bad > 0 {
		r.warn("source data", "%d files will fail as whole files (first: %s)", bad, firstBad)
	}
}

func keysOf(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
