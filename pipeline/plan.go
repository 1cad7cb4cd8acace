package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"sort"
	"strings"

	"github.com/parquet-go/parquet-go"

	"rekey/providers/keys"
	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/schemas/format"
	"rekey/schemas/objfmt"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

// Report is the outcome of a dry run.
type Report struct {
	Checks     []keys.Check
	DEKFiles   int
	DEKs       int
	KEKs       map[string]int // kek reference -> DEKs wrapped by it
	Wraps      map[string]int
	DataFiles  int
	OtherFiles int // files under source.data that are not *.parquet (ignored)
	Records    int64
	// RecordsAll is set when Records counts every record file (every
	// footer was read); otherwise it is the first file's count only, not
	// a total.
	RecordsAll bool
	DataBytes  int64
	HSMOps     int64
	HSMOpsNote string
	// Load is the HSM-operation estimate per custodian, in API calls and
	// in minutes at the rate the run allows it (KMS custodians are
	// reached through rate-limited APIs); empty when a KEK did not open.
	Load        []CustodianLoad
	DuplicateID []string
	// Predicted is what the findings say a run of the job will fail; a
	// plan fails when that is more than the job's failure budget allows.
	Predicted Prediction
}

// Prediction counts the failures a plan's findings predict, in the units a
// run's failure budget (max_failures) counts: one per DEK row, one per
// record, one per record file that fails as a whole.
type Prediction struct {
	ForeignDEKs   int // DEK rows wrapped by a KEK other than source.kek
	MalformedDEKs int // DEK rows that do not validate
	RepeatedDEKs  int // repeated rows of an application's DEK table (rewrap)
	// Records under those DEKs (reencrypt), counted by reading the record
	// files' dek_id column; RecordsCounted is false when they were not read,
	// and then Records is 0 and the total a lower bound.
	Records        int64
	RecordsCounted bool
	BadFiles       int // record files that do not open as Parquet
	NoColumn       int // record files without a configured column
	// BadCells is the sampled cells that did not open with the source
	// keys while others did (each a record the run fails; a lower bound:
	// only a few cells of each file are tried). Cells under DEKs already
	// predicted to fail are not counted again.
	BadCells int
	// Units is what the run counts as processed, the denominator of a
	// percentage budget: DEK rows plus the records of the files it reads.
	Units int64
}

// DEKs is the number of DEK rows predicted to fail.
func (p *Prediction) DEKs() int { return p.ForeignDEKs + p.MalformedDEKs + p.RepeatedDEKs }

// Total is the number of predicted failures (a lower bound when
// RecordsCounted is false and DEKs are predicted to fail).
func (p *Prediction) Total() int64 {
	return int64(p.DEKs()) + p.Records + int64(p.BadFiles) + int64(p.NoColumn) + int64(p.BadCells)
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
		if l.loc == "" || (l.name == "source.data" && j.Mode == schemas.ModeRewrap && !spec.Objects()) {
			continue
		}
		// A rewrap of objects replaces their metadata in place.
		write := l.write || l.name == "source.data" && spec.Objects() && j.Mode == schemas.ModeRewrap
		if err := storage.Check(ctx, l.loc, write); err != nil {
			r.add(false, l.name, "%v", err)
		}
	}

	// Keys first: a wrong PIN or label is the most common mistake.
	// Opened for the run's workers, so that a custodian's session limit
	// shows here (a warning naming the cap) and not in the run.
	workers := spec.KeyWorkers()
	src, srcErr := transforms.OpenKEK(ctx, spec.SourceKEK, spec.SourceWrap, workers)
	if srcErr != nil {
		r.add(false, "source KEK", "%v", srcErr)
	} else {
		r.add(true, "source KEK", "%s opened (module loaded, token found, PIN accepted, key found)", src.URI())
		if checks, ok := keys.Preflight(ctx, src, false, true); ok {
			r.Checks = append(r.Checks, checks...)
		}
	}
	dst, dstErr := transforms.OpenKEK(ctx, spec.TargetKEK, spec.TargetWrap, workers)
	if dstErr != nil {
		r.add(false, "target KEK", "%v", dstErr)
	} else {
		r.add(true, "target KEK", "%s opened, wrap %s", dst.URI(), dst.Mechanism())
		if checks, ok := keys.Preflight(ctx, dst, true, true); ok {
			r.Checks = append(r.Checks, checks...)
		}
	}

	// The preflight's own key operations below (a test unwrap, sampled
	// cells and objects) meet what the run's do: a throttled KMS, an HSM
	// failing over. They are retried the same way, inside the same rate,
	// so one transient fault does not refuse a run.
	if src != nil {
		src = keys.WithRetry(keys.WithRate(src, spec.RateFor(spec.SourceKEK)), keys.RetryPolicy{})
	}
	if dst != nil {
		dst = keys.WithRetry(keys.WithRate(dst, spec.RateFor(spec.TargetKEK)), keys.RetryPolicy{})
	}

	if spec.Objects() {
		planObjects(ctx, j, &spec, r, src, dst)
		return r
	}

	// The DEK table, streamed: only a short hash per dek_id is kept, so a
	// table of millions of DEKs does not have to fit in memory.
	index := schemas.NewDEKIndex()
	fileIdx := map[string]int{}
	conflict := map[string]bool{}
	invalid, foreign, repeats, firstRepeat := 0, 0, 0, ""
	var firstInvalid string
	var probe *schemas.DEKRow // one DEK of the source KEK, for a real unwrap
	// The dek_ids predicted to fail, so that the records under them can be
	// counted; past maxCountedDEKs they are not kept (nor counted).
	failing := map[string]bool{}
	markFailing := func(id string) {
		if id != "" && failing != nil {
			failing[id] = true
			if len(failing) > maxCountedDEKs {
				failing = nil
			}
		}
	}
	var findings []int // indexes in r.Checks of the findings that predict failures
	layout := transforms.SourceLayout(&spec, src)
	scan := func(ctx context.Context, root string, fn func(string, []schemas.DEKRow) error, files *int) error {
		return transforms.ScanDEKTableIn(ctx, layout, root, fn, files)
	}
	if spec.ColumnKeys() {
		// The wrapped keys are in the records: no table to read; the
		// cell samples below unwrap some of them.
		scan = func(context.Context, string, func(string, []schemas.DEKRow) error, *int) error { return nil }
	}
	err := scan(ctx, spec.SourceDEKs, func(file string, rows []schemas.DEKRow) error {
		fi, ok := fileIdx[file]
		if !ok {
			fi = len(fileIdx)
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
				markFailing(d.DEKID)
				continue
			}
			switch index.Add(fi, d) {
			case schemas.DEKIDConflict:
				conflict[d.DEKID] = true
			case schemas.DEKIDRepeat:
				if layout.Table.App() && j.Mode == schemas.ModeRewrap {
					// Written back row for row: a repeat would be lost.
					repeats++
					if firstRepeat == "" {
						firstRepeat = d.DEKID
					}
				}
			}
			if src != nil && !transforms.KEKMatches(src, d.KEK) {
				foreign++
				markFailing(d.DEKID)
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
	} else if spec.CellKeys() {
		sf, _, _ := spec.Formats()
		r.add(true, "source keys", "a wrapped DEK inside every cell (%s): one unwrap and one wrap per encrypted cell", sf.Describe())
	} else if spec.ColumnKeys() {
		sf, _, _ := spec.Formats()
		r.add(true, "source keys", "wrapped keys in column %q of the records (%s)", sf.KeyColumn(), sf.Describe())
	} else {
		r.add(true, "source DEK table", "%d DEKs in %d files", r.DEKs, r.DEKFiles)
		if r.DEKs == 0 {
			r.warn("source DEK table", "no DEKs: the run will have nothing to migrate")
		}
		r.Predicted.MalformedDEKs, r.Predicted.ForeignDEKs = invalid, foreign
		if invalid > 0 {
			findings = append(findings, len(r.Checks))
			r.warn("DEK rows", "%d malformed rows will become failed ledger rows (first: %s)", invalid, firstInvalid)
		}
		if r.Predicted.RepeatedDEKs = repeats; repeats > 0 {
			findings = append(findings, len(r.Checks))
			r.warn("DEK rows", "%d rows repeat a dek_id of the application's DEK table (first: %q): a rewrap writes the table back one row per dek_id, so they will fail; deduplicate the table", repeats, firstRepeat)
		}
		if foreign > 0 && foreign == r.DEKs-invalid {
			r.add(false, "DEK KEKs", "none of the %d DEKs is wrapped by source.kek %s; the table references %v (is source.kek the right key?)", foreign, src.URI(), keysOf(r.KEKs))
		} else if foreign > 0 {
			findings = append(findings, len(r.Checks))
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
			dek, err := src.Unwrap(ctx, transforms.TableBinding(layout.Table, probe.DEKID), probe.Wrap, probe.Wrapped)
			if err != nil {
				r.add(false, "test unwrap", "DEK %q: %v", probe.DEKID, err)
			} else {
				dek.Zero()
				r.add(true, "test unwrap", "DEK %q unwrapped by the source KEK (%s)", probe.DEKID, probe.Wrap)
			}
		}
	}

	r.Predicted.Units = int64(r.DEKs)
	if j.Mode == schemas.ModeReencrypt || spec.ColumnKeys() {
		if i := planData(ctx, j, r, scanData, failing); i >= 0 {
			findings = append(findings, i)
		}
	}
	if spec.CellKeys() {
		// One DEK per cell: the estimate counts a DEK per record and
		// encrypted column (null cells, which need none, included).
		r.DEKs = int(r.Records) * len(j.Columns.Encrypted)
	}
	if src != nil && j.Source.Data != "" {
		if i := planSamples(ctx, j, &spec, r, src, failing); i >= 0 {
			findings = append(findings, i)
		}
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
	if ok, _ := storage.Exists(ctx, ledger.ManifestPath(spec.Ledger, spec.RunID)); ok && !j.Resume {
		r.add(false, "ledger", "run %q already finished (a manifest is at %s); choose a new --run-id, or --resume to re-check it", j.RunID, ledger.ManifestPath(spec.Ledger, spec.RunID))
	} else if parts, err := storage.List(ctx, ledger.RunDir(spec.Ledger, spec.RunID)); err == nil && len(parts) > 0 && !j.Resume {
		r.add(false, "ledger", "run %q has %d ledger parts already (an interrupted run?): add --resume to finish it, or choose a new --run-id", j.RunID, len(parts))
	} else {
		r.add(true, "ledger", "%s", ledger.RunDir(spec.Ledger, spec.RunID))
	}

	r.judge(j, findings)

	switch j.Mode {
	case schemas.ModeRewrap:
		r.HSMOps = int64(r.DEKs) * 3
		r.HSMOpsNote = "per DEK: source unwrap, target wrap, target unwrap to verify (RSA wraps are done with the public key, off the HSM)"
	case schemas.ModeReencrypt:
		r.HSMOps = int64(r.DEKs) * 4
		r.HSMOpsNote = "per DEK: source unwrap, random from the target HSM, target wrap, target unwrap to verify; records cost no HSM work (each further worker process unwraps each DEK it meets once more on each side)"
	}
	if src != nil && dst != nil {
		// One custodian has one budget. Validate decided "one custodian"
		// from the references; the opened keys know better (two spellings
		// of one AWS account, say).
		if sr, dr, sf, df := j.Rates(); sr > 0 && dr > 0 && sr != dr && keys.Custodian(src) == keys.Custodian(dst) {
			r.add(false, "rates", "source.kek and target.kek are on one custodian (%s), which has one budget, but the job gives it %g/s (%s) and %g/s (%s): set one rate", keys.Custodian(src), sr, sf, dr, df)
		}
		var note string
		r.Load, note = estimateLoad(j, r, src, dst)
		if note != "" {
			r.HSMOpsNote = note
		}
		if spec.CellKeys() {
			r.HSMOpsNote = "every encrypted cell carries its own DEK, so each costs custodian calls (a DEK table format costs them per DEK, not per record): source unwrap, target wrap, target unwrap to verify"
			if j.Mode == schemas.ModeReencrypt {
				r.HSMOpsNote += ", and a new DEK per cell"
			}
		}
		r.HSMOps = 0
		for _, l := range r.Load {
			r.HSMOps += l.Calls
		}
		r.HSMOpsNote += loadNote(r.Load)
	}
	return r
}

// CustodianLoad is what a run asks of one custodian: its API calls (HSM
// operations) and how long they take at the rate the run allows it.
type CustodianLoad struct {
	Side      string // "source", "target", or "source and target" (one custodian)
	Custodian string // keys.Custodian: rate limits are shared per custodian
	Calls     int64
	Per       string  // what the calls are
	Rate      float64 // operations/s: the job's hsm_rate, else the scheme's default; 0: unlimited
	RateFrom  string  // where Rate comes from
}

// Minutes is how long the calls take at Rate; 0 when the rate is unlimited.
func (l CustodianLoad) Minutes() float64 {
	if l.Rate <= 0 {
		return 0
	}
	return float64(l.Calls) / l.Rate / 60
}

func (l CustodianLoad) String() string {
	s := fmt.Sprintf("%s %s: %d API calls (%s)", l.Side, l.Custodian, l.Calls, l.Per)
	if l.Rate <= 0 {
		return s + ", rate unlimited (" + l.RateFrom + ")"
	}
	return s + fmt.Sprintf(", %s minutes at %s/s (%s)", minutes(l.Minutes()), strconvRate(l.Rate), l.RateFrom)
}

func minutes(m float64) string {
	switch {
	case m >= 100:
		return fmt.Sprintf("%.0f", m)
	case m >= 1:
		return fmt.Sprintf("%.1f", m)
	case m > 0 && m < 0.01:
		return "under 0.01"
	}
	return fmt.Sprintf("%.2f", m)
}

func strconvRate(r float64) string {
	if r == float64(int64(r)) {
		return fmt.Sprintf("%d", int64(r))
	}
	return fmt.Sprintf("%g", r)
}

// estimateLoad splits the run's HSM operations by custodian. Per DEK, a
// rewrap unwraps with the source and wraps with the target, then unwraps
// the new wrap with the target to verify it; where the source custodian
// rewraps into the target itself (keys.CanRewrap for the DEKs' wrap), that
// is one rewrap call at the source and at most one verifying unwrap at the
// target. A reencrypt unwraps each source DEK once, and per new DEK asks
// the target for randomness (dek_source hsm, when it has a generator),
// wraps and verifies. The calls of one custodian share its budget: when
// source and target are one custodian, they are added. These are the
// calls of one worker process; each further process unwraps each DEK it
// meets once more. note, when not empty, replaces the mode's generic
// description of the HSM operations.
func estimateLoad(j *Job, r *Report, src, dst keys.KEK) (load []CustodianLoad, note string) {
	deks := int64(r.DEKs)
	verify := int64(1)
	if j.VerifyBeforeCommit != nil && !*j.VerifyBeforeCommit {
		verify = 0
	}
	var inside int64
	if j.Mode == schemas.ModeRewrap {
		for mech, n := range r.Wraps {
			if keys.CanRewrap(src, dst, mech) {
				inside += int64(n)
			}
		}
		inside = min(inside, deks)
	}
	var s, t CustodianLoad
	switch j.Mode {
	case schemas.ModeRewrap:
		out := deks - inside
		s.Calls, t.Calls = inside+out, out*(1+verify)+inside*verify
		switch {
		case inside == 0:
			s.Per, t.Per = "1 unwrap per DEK", "1 wrap per DEK"
			if verify > 0 {
				t.Per += " and 1 unwrap to verify it"
			}
		case out == 0:
			s.Per, t.Per = "1 rewrap inside the custodian per DEK", "at most 1 unwrap per DEK to verify the custodian's rewrap"
		default:
			s.Per = fmt.Sprintf("%d rewraps inside the custodian, %d unwraps", inside, out)
			t.Per = fmt.Sprintf("%d wraps and up to %d unwraps to verify", out, (out+inside)*verify)
		}
		if inside > 0 {
			note = "per DEK the source custodian rewraps inside (" + plural(inside, "DEK", "DEKs") + "): 1 rewrap there"
			if verify > 0 {
				note += " and at most 1 target unwrap to verify"
			}
			if out > 0 {
				note += "; per other DEK: source unwrap, target wrap, target unwrap to verify"
			}
		}
	case schemas.ModeReencrypt:
		gen := int64(0)
		if j.DEKSource != "crypto-rand" && keys.CanGenerate(dst) {
			gen = 1
		}
		s.Calls, t.Calls = deks, deks*(gen+1+verify)
		s.Per = "1 unwrap per DEK"
		t.Per = "per new DEK: 1 wrap"
		if gen > 0 {
			t.Per = "per new DEK: 1 random, 1 wrap"
		} else {
			note = "per DEK: source unwrap, target wrap, target unwrap to verify (new DEKs from crypto/rand); records cost no HSM work (each further worker process unwraps each DEK it meets once more on each side)"
		}
		if verify > 0 {
			t.Per += ", 1 unwrap to verify"
		}
	default:
		return nil, ""
	}
	s.Side, s.Custodian = "source", keys.Custodian(src)
	t.Side, t.Custodian = "target", keys.Custodian(dst)
	srcRate, dstRate, srcFrom, dstFrom := j.Rates()
	s.Rate, s.RateFrom = rateOf(srcRate, srcFrom, src)
	t.Rate, t.RateFrom = rateOf(dstRate, dstFrom, dst)
	if s.Custodian == t.Custodian {
		s.Side, s.Calls, s.Per = "source and target", s.Calls+t.Calls, "source: "+s.Per+"; target: "+t.Per
		return []CustodianLoad{s}, note
	}
	return []CustodianLoad{s, t}, note
}

// rateOf is the rate the run allows k's custodian: the rate set in the
// job (from names where: source.hsm_rate, target.hsm_rate or hsm_rate),
// else the scheme's default (a KMS's published quota); 0 is unlimited.
func rateOf(set float64, from string, k keys.KEK) (float64, string) {
	if set > 0 {
		return set, from
	}
	scheme, _, _ := strings.Cut(k.URI(), ":")
	if d := keys.DefaultRate(k); d > 0 {
		return d, "the " + scheme + " default; set hsm_rate (or source.hsm_rate, target.hsm_rate) to change it"
	}
	return 0, "no hsm_rate, and " + scheme + " has no default"
}

// loadNote is the estimate per custodian, for the plan's HSM line.
func loadNote(load []CustodianLoad) string {
	if len(load) == 0 {
		return ""
	}
	parts := make([]string, len(load))
	slowest := 0.0
	for i, l := range load {
		parts[i] = l.String()
		slowest = max(slowest, l.Minutes())
	}
	s := "; per custodian, in one worker process: " + strings.Join(parts, "; ")
	if slowest >= 0.01 {
		s += fmt.Sprintf("; at these rates the run takes at least %s minutes", minutes(slowest))
	}
	return s
}

// maxCountedDEKs caps the dek_ids a plan keeps to count the records under
// DEKs predicted to fail.
const maxCountedDEKs = 1 << 20

// planData checks the record files: every one when scan is set, else the
// first only, unless failures are predicted and the budget may allow them,
// for then only every file tells how many (a percentage is of all the
// records, and every record under a failing DEK fails too). It returns the
// index in r.Checks of its finding of files that will fail, or -1.
func planData(ctx context.Context, j *Job, r *Report, scan bool, failing map[string]bool) int {
	files, err := storage.List(ctx, j.Source.Data)
	if err != nil {
		r.add(false, "source data", "%v", err)
		return -1
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
		return -1
	}
	mayAllow := budgetMayAllow(j.MaxFailures)
	// failing is nil when more DEKs fail than it keeps.
	full := scan || ((failing == nil || len(failing) > 0) && mayAllow)
	firstBad := scanData(ctx, j, r, data, full, failing)
	if !full && r.Predicted.BadFiles+r.Predicted.NoColumn > 0 && mayAllow {
		full = true
		firstBad = scanData(ctx, j, r, data, full, failing)
	}
	if full {
		r.add(true, "source data", "%d files, %d records, %d bytes", r.DataFiles, r.Records, r.DataBytes)
	} else {
		r.add(true, "source data", "%d files (first file's schema checked)", r.DataFiles)
	}
	if r.OtherFiles > 0 {
		r.warn("source data", "%d files that are not .parquet are ignored", r.OtherFiles)
	}
	if bad := r.Predicted.BadFiles + r.Predicted.NoColumn; bad > 0 {
		r.warn("source data", "%d files will fail as whole files (first: %s)", bad, firstBad)
		return len(r.Checks) - 1
	}
	return -1
}

// scanData reads the footers of the record files (all, or the first one),
// and when failing is set and all are read, counts the records under those
// DEKs from the dek_id column. It returns the first whole-file failure.
func scanData(ctx context.Context, j *Job, r *Report, data []string, all bool, failing map[string]bool) (firstBad string) {
	p := &r.Predicted
	r.Records, r.DataBytes = 0, 0
	p.BadFiles, p.NoColumn, p.Records = 0, 0, 0
	p.Units = int64(r.DEKs)
	p.RecordsCounted = all && failing != nil
	r.RecordsAll = all
	if !all {
		data = data[:min(len(data), 1)]
	}
	for ft := range footers(ctx, j.Source.Data, data) {
		path, f, pf := ft.path, ft.f, ft.pf
		if ft.err != nil {
			p.BadFiles++
			if firstBad == "" {
				firstBad = ft.err.Error()
			}
			continue
		}
		r.Records += pf.NumRows()
		r.DataBytes += f.Size()
		missing := ""
		dekCol := j.Columns.DEKID
		var needs []string
		if sf, err := format.New(j.Source.Format, j.Source.FormatOptions); err == nil {
			switch sf.Keys() {
			case format.KeyColumn:
				dekCol = sf.KeyColumn()
			case format.KeyCell:
				dekCol = "" // in the cells
			}
			needs = sf.Needs()
		}
		for _, c := range append(append([]string{}, j.Columns.Encrypted...), dekCol, j.Columns.RecordID) {
			if _, ok := pf.Schema().Lookup(c); !ok && c != "" {
				missing = fmt.Sprintf("%q", c)
				break
			}
		}
		for _, c := range needs {
			if _, ok := pf.Schema().Lookup(c); !ok && missing == "" {
				missing = fmt.Sprintf("%q (read by source.format's aad or binding template: fix source.format_options)", c)
			}
		}
		if tf, err := format.New(j.Target.Format, j.Target.FormatOptions); err == nil && j.Mode == schemas.ModeReencrypt {
			// The target's templates read the same row, and a target
			// tag_column is written into the file's column of that name.
			for _, c := range tf.Needs() {
				if _, ok := pf.Schema().Lookup(c); !ok && missing == "" {
					missing = fmt.Sprintf("%q (read by target.format's aad or binding template, or its tag_column, which rekey writes into and does not add: fix target.format_options)", c)
				}
			}
		}
		switch {
		case missing != "":
			p.NoColumn++
			if firstBad == "" {
				firstBad = fmt.Sprintf("%s: no column %s", path, missing)
			}
		case p.RecordsCounted && len(failing) > 0:
			n, err := recordsUnder(pf, j.Columns.DEKID, failing)
			if err != nil {
				// The run cannot read this file's rows either.
				p.BadFiles++
				if firstBad == "" {
					firstBad = fmt.Sprintf("%s: column %q does not read (%v)", path, j.Columns.DEKID, err)
				}
				break
			}
			p.Records += n
			p.Units += pf.NumRows()
		default:
			p.Units += pf.NumRows()
		}
		f.Close()
	}
	return firstBad
}

// CountRecords counts the records of j's source record files from their
// footers (unreadable files count none: they fail as whole files).
func CountRecords(ctx context.Context, j *Job) (int64, error) {
	files, err := storage.List(ctx, j.Source.Data)
	if err != nil {
		return 0, err
	}
	var data []string
	for _, f := range files {
		if strings.HasSuffix(f, ".parquet") {
			data = append(data, f)
		}
	}
	var n int64
	for ft := range footers(ctx, j.Source.Data, data) {
		if ft.err == nil {
			n += ft.pf.NumRows()
			ft.f.Close()
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
	}
	return n, nil
}

// footer is one record file opened with its Parquet footer read, or why
// it could not be.
type footer struct {
	path string
	f    storage.File
	pf   *parquet.File
	err  error
}

// footerWindow is how many record files footers reads ahead: a footer is
// one or two small reads, so on an object store the round trips, not the
// bytes, are the cost.
const footerWindow = 16

// footers yields the record files data (relative to root) in order, each
// opened and its footer read, up to footerWindow of them read ahead
// concurrently. The caller closes each yielded file; files read ahead
// and not yielded (the caller stopped) are closed here.
func footers(ctx context.Context, root string, data []string) iter.Seq[footer] {
	return func(yield func(footer) bool) {
		out := make([]chan footer, len(data))
		for i := range out {
			out[i] = make(chan footer, 1)
		}
		sem := make(chan struct{}, footerWindow)
		stop, launched := make(chan struct{}), make(chan int, 1)
		go func() {
			for i, rel := range data {
				select {
				case sem <- struct{}{}:
				case <-stop:
					launched <- i
					return
				}
				go func() {
					ft := footer{path: storage.Join(root, rel)}
					f, err := storage.Open(ctx, ft.path)
					if err != nil {
						ft.err = err
					} else if pf, err := parquet.OpenFile(f, f.Size(), parquet.SkipPageIndex(true), parquet.SkipBloomFilters(true)); err != nil {
						f.Close()
						ft.err = fmt.Errorf("%s: not a readable Parquet file (%v)", ft.path, err)
					} else {
						ft.f, ft.pf = f, pf
					}
					out[i] <- ft
				}()
			}
			launched <- len(data)
		}()
		for i := range out {
			ft := <-out[i]
			<-sem
			if !yield(ft) {
				close(stop)
				for _, c := range out[i+1 : <-launched] {
					if ft := <-c; ft.f != nil {
						ft.f.Close()
					}
				}
				return
			}
		}
	}
}

// recordsUnder counts the rows of pf whose dek_id column names one of ids.
// Only that column is read.
func recordsUnder(pf *parquet.File, col string, ids map[string]bool) (int64, error) {
	leaf, ok := pf.Schema().Lookup(col)
	if !ok {
		return 0, fmt.Errorf("no column %q", col)
	}
	if leaf.Node.Type().Kind() != parquet.ByteArray {
		return 0, nil // not a dek_id column the run reads: the whole file fails
	}
	var n int64
	buf := make([]parquet.Value, 1024)
	for _, rg := range pf.RowGroups() {
		pages := rg.ColumnChunks()[leaf.ColumnIndex].Pages()
		for {
			page, err := pages.ReadPage()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				pages.Close()
				return n, err
			}
			vals := page.Values()
			for {
				k, err := vals.ReadValues(buf)
				for _, v := range buf[:k] {
					if !v.IsNull() && ids[string(v.ByteArray())] {
						n++
					}
				}
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					parquet.Release(page)
					pages.Close()
					return n, err
				}
			}
			parquet.Release(page)
		}
		if err := pages.Close(); err != nil {
			return n, err
		}
	}
	return n, nil
}

// budgetMayAllow reports whether max_failures s can accept any failure at
// all: a count above 0 or a percentage. Unset and 0 accept none.
func budgetMayAllow(s string) bool {
	b, err := transforms.ParseBudget(s)
	return err == nil && (b.Count > 0 || b.Ratio > 0)
}

// judge compares the predicted failures with the job's failure budget. Over
// the budget, the plan fails and so do the findings that predicted them (a
// run's preflight prints failed checks only); within it, they stay warnings
// and one more says the budget accepts them.
//
// An unset max_failures does not stop a run, but a run that fails records
// ends with exit 3, not success: a plan accepts predicted failures only
// when max_failures says how many may fail. A percentage is compared with
// the share of the DEK rows (all of them are migrated before any record)
// and with the share of everything the run processes.
func (r *Report) judge(j *Job, findings []int) {
	p := &r.Predicted
	total := p.Total()
	if total == 0 {
		return
	}
	var parts []string
	if p.ForeignDEKs > 0 {
		parts = append(parts, plural(int64(p.ForeignDEKs), "DEK names", "DEKs name")+" another KEK")
	}
	if p.MalformedDEKs > 0 {
		parts = append(parts, plural(int64(p.MalformedDEKs), "DEK row is", "DEK rows are")+" malformed")
	}
	if p.RepeatedDEKs > 0 {
		parts = append(parts, plural(int64(p.RepeatedDEKs), "DEK row repeats", "DEK rows repeat")+" a dek_id")
	}
	if p.DEKs() > 0 && j.Mode == schemas.ModeReencrypt {
		if p.RecordsCounted {
			parts = append(parts, plural(p.Records, "record", "records")+" under those DEKs")
		} else {
			parts = append(parts, "every record under those DEKs (not counted)")
		}
	}
	if p.BadFiles > 0 {
		parts = append(parts, plural(int64(p.BadFiles), "file", "files")+" unreadable")
	}
	if p.NoColumn > 0 {
		parts = append(parts, plural(int64(p.NoColumn), "file lacks", "files lack")+" a configured column")
	}
	if p.BadCells > 0 {
		parts = append(parts, plural(int64(p.BadCells), "sampled cell does", "sampled cells do")+" not open with the source keys (their records fail; other cells may too)")
	}
	what := strings.Join(parts, ", ")
	switch {
	case len(parts) > 1 && !p.RecordsCounted && p.DEKs() > 0 && j.Mode == schemas.ModeReencrypt:
		what += ": at least " + plural(total, "failure", "failures")
	case len(parts) > 1:
		what += fmt.Sprintf(": %d failures in all", total)
	}
	over, budget := overBudget(j.MaxFailures, p, r.DEKs)
	if !over {
		r.warn("predicted failures", "%s; within the failure budget (%s): the run goes on and ends with exit 3, these in the ledger as failed rows", what, budget)
		return
	}
	for _, i := range findings {
		r.Checks[i].OK, r.Checks[i].Warn = false, false
	}
	r.add(false, "predicted failures", "%s; more than the failure budget allows (%s): fix the input, or set max_failures (--max-failures) to the count or percentage of failures you accept", what, budget)
}

// overBudget tells whether the predicted failures are more than max_failures
// s accepts, and describes the budget.
func overBudget(s string, p *Prediction, deks int) (bool, string) {
	b, _ := transforms.ParseBudget(s) // checked by Validate
	total := p.Total()
	switch {
	case strings.TrimSpace(s) == "":
		return total > 0, "max_failures is not set: no failure is accepted"
	case b.Count < 0:
		return total > 0, "max_failures=0"
	case b.Count > 0:
		return total > b.Count, "max_failures=" + s
	}
	share := func(n, of int64) string {
		if of == 0 {
			return "100%"
		}
		return fmt.Sprintf("%.4g%%", 100*float64(n)/float64(of))
	}
	desc := fmt.Sprintf("max_failures=%s; predicted: %s of %d units", s, share(total, p.Units), p.Units)
	if p.DEKs() > 0 {
		desc += fmt.Sprintf(", %s of %d DEKs", share(int64(p.DEKs()), int64(deks)), deks)
	}
	over := float64(total) > b.Ratio*float64(p.Units) || float64(p.DEKs()) > b.Ratio*float64(deks)
	return over, desc
}

func plural(n int64, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

func keysOf(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// planSamples opens a few cells of every record file with the source keys,
// as the run would (j.PlanSamples per file, default 3): a layout, encoding,
// AAD or key mistake refuses the plan, naming file, column, record and the
// likely cause, instead of failing every record of the run. When only some
// cells do not open, the format and keys are right and those cells (or
// their keys) are bad on their own: a finding whose records count against
// the failure budget (judge); its index in r.Checks is returned, else -1.
// failing holds the dek_ids already predicted to fail, whose cells are
// not counted again (nil: too many to keep; then they may be, which makes
// the plan stricter, not laxer). A DEK table rewrap, which does not touch
// records, only warns.
func planSamples(ctx context.Context, j *Job, spec *transforms.Spec, r *Report, src keys.KEK, failing map[string]bool) int {
	n := j.PlanSamples
	if n == 0 {
		n = 3
	}
	if n < 0 {
		r.warn("cell samples", "off (plan_samples < 0)")
		return -1
	}
	files, err := storage.List(ctx, j.Source.Data)
	if err != nil {
		return -1 // planData reports it
	}
	var samples []transforms.PlanSample
	want := map[string]*schemas.DEKRow{}
	for _, rel := range files {
		if !strings.HasSuffix(rel, ".parquet") {
			continue
		}
		s, err := transforms.SampleRecords(ctx, spec, rel, n)
		if err != nil {
			continue // a whole-file failure (unreadable, a column missing): planData predicts it
		}
		for _, x := range s {
			if x.DEKID != "" {
				want[x.DEKID] = nil
			}
		}
		samples = append(samples, s...)
	}
	if len(want) > 0 {
		_ = transforms.ScanDEKTableIn(ctx, transforms.SourceLayout(spec, src), spec.SourceDEKs, func(_ string, rows []schemas.DEKRow) error {
			for i := range rows {
				if v, ok := want[rows[i].DEKID]; ok && v == nil {
					c := rows[i]
					c.Wrapped = bytes.Clone(c.Wrapped)
					want[c.DEKID] = &c
				}
			}
			return nil
		}, new(int))
	}
	bad, first, known := 0, "", 0
	for i := range samples {
		s := &samples[i]
		if err := transforms.OpenSample(ctx, spec, src, s, want[s.DEKID]); err != nil {
			bad++
			if s.DEKID != "" && failing[s.DEKID] {
				known++
			}
			if first == "" {
				first = fmt.Sprintf("%s, column %q, record %q: %v", storage.Join(j.Source.Data, s.File), s.Column, s.RecordID, err)
			}
		}
	}
	switch {
	case len(samples) == 0:
		r.warn("cell samples", "no encrypted cell found to try")
	case bad == len(samples):
		r.add(false, "cell samples", "none of %d sampled cells opens with the source keys; first: %s", len(samples), first)
	case bad > 0 && j.Mode == schemas.ModeRewrap && !spec.ColumnKeys():
		// A DEK table rewrap does not touch the records: these cells fail
		// nothing of the run (a DEK proven by a cell is proven by another
		// one, or fails on its own), but they will not open afterwards.
		r.warn("cell samples", "%d of %d sampled cells do not open with the source keys; a rewrap of the DEK table leaves them as they are (first: %s)", bad, len(samples), first)
	case bad > 0:
		// Some open: the job's format and keys are right, and these cells
		// (or their keys) are bad on their own; the run fails their records.
		r.warn("cell samples", "%d of %d sampled cells do not open with the source keys; their records will fail, and other cells may too (first: %s)", bad, len(samples), first)
		if r.Predicted.BadCells = bad - known; r.Predicted.BadCells > 0 {
			return len(r.Checks) - 1
		}
	default:
		r.add(true, "cell samples", "%d cells of %d files opened with the source keys", len(samples), r.DataFiles)
	}
	return -1
}

// planObjects is the plan of an object job: the objects listed and
// counted, a few of them read (metadata only) and their keys unwrapped
// with the source, the ledger checked, and the custodian calls estimated.
func planObjects(ctx context.Context, j *Job, spec *transforms.Spec, r *Report, src, dst keys.KEK) {
	all, err := storage.List(ctx, j.Source.Data)
	if err != nil {
		r.add(false, "source objects", "%v", err)
		return
	}
	store, err := storage.Objects(j.Source.Data)
	if err != nil {
		r.add(false, "source objects", "%v", err)
		return
	}
	var objects []string
	for _, rel := range all {
		if !strings.HasSuffix(rel, ".instruction") {
			objects = append(objects, rel)
		}
	}
	r.DataFiles = len(objects)
	if len(objects) == 0 {
		r.warn("source objects", "no objects under %s: the run will have nothing to migrate", j.Source.Data)
	}
	calls := int64(3) // source unwrap, target wrap, target unwrap to verify
	sampled, opened := 0, 0
	for _, rel := range objects {
		path := storage.Join(j.Source.Data, rel)
		info, err := store.StatObject(ctx, path)
		if err != nil {
			r.add(false, "source objects", "%s: %v", path, err)
			return
		}
		r.DataBytes += info.Size
		if sampled >= max(j.PlanSamples, 1) {
			continue
		}
		sampled++
		env, err := objfmt.Parse(info.Meta)
		if err != nil {
			r.warn("source objects", "%s: %v (it will be a failed or skipped ledger row)", path, err)
			continue
		}
		if env.Library == objfmt.OSS {
			calls = 6 // the IV is wrapped on its own
		}
		if src == nil {
			continue
		}
		b := keys.Binding{Context: env.Context}
		mech := spec.SourceWrap
		if mech == "" {
			mech = src.Mechanism()
		}
		if env.WrapAlg == objfmt.WrapRSAPKCS1 {
			mech, b = "rsa-pkcs1", keys.Binding{}
		}
		k, err := src.Unwrap(ctx, b, mech, env.Key)
		if err != nil && dst != nil && j.Mode == schemas.ModeRewrap {
			if back, err2 := dst.Unwrap(ctx, b, dst.Mechanism(), env.Key); err2 == nil {
				back.Zero()
				r.warn("source objects", "%s is wrapped by target.kek already (an earlier run?): it will be skipped", path)
				continue
			}
		}
		if err != nil {
			r.add(false, "source objects", "%s: its key (%s) does not unwrap with source.kek: %v; check source.kek and source.wrap", path, env.Describe(), err)
			continue
		}
		k.Zero()
		opened++
	}
	if sampled > 0 {
		r.add(true, "source objects", "%d objects, %d bytes (%s); %d of %d sampled keys unwrapped by source.kek", len(objects), r.DataBytes, j.Source.Format, opened, sampled)
	}
	if ok, _ := storage.Exists(ctx, ledger.ManifestPath(spec.Ledger, spec.RunID)); ok && !j.Resume {
		r.add(false, "ledger", "run %q already finished (a manifest is at %s); choose a new --run-id, or --resume to re-check it", j.RunID, ledger.ManifestPath(spec.Ledger, spec.RunID))
	} else if parts, err := storage.List(ctx, ledger.RunDir(spec.Ledger, spec.RunID)); err == nil && len(parts) > 0 && !j.Resume {
		r.add(false, "ledger", "run %q has %d ledger parts already (an interrupted run?): add --resume to finish it, or choose a new --run-id", j.RunID, len(parts))
	} else {
		r.add(true, "ledger", "%s", ledger.RunDir(spec.Ledger, spec.RunID))
	}
	r.HSMOps = int64(len(objects)) * calls
	r.HSMOpsNote = "per object: source unwrap, target wrap, target unwrap to verify (twice for OSS: its IV is wrapped on its own)"
	if j.Mode == schemas.ModeRewrap {
		r.HSMOpsNote += "; the body is not read (a server-side copy replaces the metadata)"
	} else {
		r.HSMOpsNote += "; every body is read and written once"
	}
}
