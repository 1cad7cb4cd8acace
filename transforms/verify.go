package transforms

import (
	"bytes"
	"context"
	"crypto/cipher"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/parquet-go/parquet-go"

	"rekey/providers/keys"
	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/schemas/format"
	"rekey/schemas/objfmt"
)

func init() {
	register.DoFn3x1[context.Context, []byte, func(VerifyUnit), error](&ListVerifyUnitsFn{})
	register.Emitter1[VerifyUnit]()
	register.Function2x0(unitTargets)
	register.DoFn3x1[context.Context, string, func(schemas.DEKRow), error](&ReadDEKsFn{})
	register.Emitter1[schemas.DEKRow]()
	register.DoFn3x1[context.Context, VerifyUnit, func(VerifyResult), error](&VerifyDEKsFn{})
	register.DoFn4x1[context.Context, VerifyUnit, func(*schemas.DEKRow) bool, func(VerifyResult), error](&VerifyFn{})
	register.Iter1[schemas.DEKRow]()
	register.Emitter1[VerifyResult]()
}

// Kinds of verify units.
const (
	VerifyKindRecords = "records"
	VerifyKindDEKs    = "deks"
)

// VerifySpec configures a verify: its own configuration, not a run's. The
// Target is what is checked; a Source, when given, is what the target is
// matched with, as Match says.
type VerifySpec struct {
	// Target: the DEK table, its KEK (and wrap, "" = as each row says),
	// and the records (optional) with their cell format.
	TargetData, TargetDEKs, TargetKEK, TargetWrap string
	TargetFormat                                  string
	TargetFormatOptions                           map[string]string
	// Source (optional): the DEK table and records the target came from,
	// and the source DEK table's layout (zero: rekey's own).
	SourceData, SourceDEKs string
	SourceTable            format.Table
	// Match is how source and target correspond: schemas.ModeRewrap (the
	// same dek_ids; the records are checked where they are) or
	// schemas.ModeReencrypt (each dek_id X became NewDEKID(X, run); the
	// records were copied under the same file names). "" without a source.
	Match string

	Encrypted           []string
	DEKColumn, IDColumn string

	Workers, CacheSize, RowBatch, MaxCellBytes int
	HSMRate                                    float64

	// Report is where the JSON report goes.
	Report string
}

// Validate checks what a verify needs before anything is read.
func (v *VerifySpec) Validate() error {
	if objfmt.Known(v.TargetFormat) {
		if v.TargetData == "" || v.TargetKEK == "" || v.Report == "" {
			return errors.New("verify of objects: need the objects (target.data, or source.data for a rewrap), the target KEK and a report path")
		}
		return nil
	}
	if tf, err := format.New(v.TargetFormat, v.TargetFormatOptions); err == nil && tf.Keys() != format.KeyTable {
		if v.TargetData == "" || v.TargetKEK == "" || v.Report == "" {
			return errors.New("verify of records that carry their wrapped DEKs (in their cells or in a key column): need the records (target.data), the target KEK and a report path")
		}
		return nil
	}
	switch {
	case v.TargetDEKs == "" || v.TargetKEK == "":
		return errors.New("need a DEK table and its KEK (target.deks, target.kek)")
	case (v.SourceDEKs != "" || v.SourceData != "") && v.Match != schemas.ModeRewrap && v.Match != schemas.ModeReencrypt:
		return fmt.Errorf("verify: match %q: want %s or %s when a source is compared", v.Match, schemas.ModeRewrap, schemas.ModeReencrypt)
	case v.SourceDEKs == "" && v.SourceData == "" && v.Match != "":
		return fmt.Errorf("verify: match %q without a source", v.Match)
	case v.Report == "":
		return errors.New("verify: no report path")
	}
	return nil
}

// records is the view of v the record and key helpers shared with the
// run's DoFns read (cell layouts, formats, KEK opening, tuning): the
// target's side, the columns and the tuning. It is never a run.
func (v *VerifySpec) records() *Spec {
	return &Spec{TargetData: v.TargetData, TargetDEKs: v.TargetDEKs, TargetKEK: v.TargetKEK, TargetWrap: v.TargetWrap,
		SourceFormat: v.TargetFormat, SourceFormatOptions: v.TargetFormatOptions,
		TargetFormat: v.TargetFormat, TargetFormatOptions: v.TargetFormatOptions,
		Encrypted: v.Encrypted, DEKColumn: v.DEKColumn, IDColumn: v.IDColumn,
		Workers: v.Workers, CacheSize: v.CacheSize, RowBatch: v.RowBatch, MaxCellBytes: v.MaxCellBytes, HSMRate: v.HSMRate}
}

// VerifyUnit is one unit of a verify: a relative name, the source file of
// that name and the target files it maps to. It carries paths only.
type VerifyUnit struct {
	Rel     string
	Source  string   // "" when the source has no such file, or nothing is compared
	Targets []string // none (missing at the target), one, or one per run (DEK tables of --incremental reencrypt runs)
}

// VerifyResult is what one verify unit reports: its line of the report,
// how the source's records or DEKs of that unit fared at the target, the
// target-side totals and the first problems.
type VerifyResult struct {
	Kind        string
	Path        string   // the target file: where it is, or where it should be
	Targets     []string // every target file, when there are several
	Source      string
	TargetFiles int
	Error       string // why the source or the target file could not be read
	Compared    bool   // matched against the source (else: the target alone)
	Read        int64  // DEK rows or records read at the target
	Verified    int64  // of those, the ones that unwrap or decrypt
	Counts      VerifyCounts
	Totals      schemas.Totals
	Failures    []schemas.FailureNote
}

func newVerifyResult(kind, root string, u VerifyUnit, compared bool) VerifyResult {
	r := VerifyResult{Kind: kind, Path: storage.Join(root, u.Rel), Source: u.Source, TargetFiles: len(u.Targets), Compared: compared}
	if len(u.Targets) == 1 {
		r.Path = u.Targets[0]
	} else if len(u.Targets) > 1 {
		r.Targets = u.Targets
	}
	r.Totals.Files = 1
	return r
}

func (r *VerifyResult) note(source, recordID, dekID, msg string) {
	if len(r.Failures) < maxFailureNotes {
		r.Failures = append(r.Failures, schemas.FailureNote{Source: source, RecordID: recordID, DEKID: dekID, Error: msg})
	}
}

// unreadable records a source or target file that could not be read.
func (r *VerifyResult) unreadable(path string, err error) {
	if r.Error == "" {
		r.Error = err.Error()
	}
	r.Totals.FilesFailed++
	r.Totals.Failed++
	r.note(path, "", "", "unreadable: "+err.Error())
}

// ListVerifyUnitsFn lists a source root and a target root and emits the
// union of their Parquet files by relative name. A target root that does
// not exist is empty (a run over an empty source writes nothing there); a
// source root that does not exist is an error. With ByRun, a target file's
// leading run_id=<id>/ folder is not part of its name: the DEK tables of
// --incremental reencrypt runs. Only file names are held, never contents.
type ListVerifyUnitsFn struct {
	Source string // "" for the target alone
	Target string
	ByRun  bool
}

// ProcessElement lists both roots once per impulse.
func (f *ListVerifyUnitsFn) ProcessElement(ctx context.Context, _ []byte, emit func(VerifyUnit)) error {
	units := map[string]*VerifyUnit{}
	unit := func(rel string) *VerifyUnit {
		u := units[rel]
		if u == nil {
			u = &VerifyUnit{Rel: rel}
			units[rel] = u
		}
		return u
	}
	if f.Source != "" {
		files, err := storage.List(ctx, f.Source)
		if err != nil {
			return fmt.Errorf("rekey verify: list source %s: %w", f.Source, err)
		}
		for _, rel := range files {
			if isParquet(rel) {
				unit(rel).Source = storage.Join(f.Source, rel)
			}
		}
	}
	files, err := storage.List(ctx, f.Target)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("rekey verify: list target %s: %w", f.Target, err)
	}
	for _, rel := range files {
		if !isParquet(rel) {
			continue
		}
		name := rel
		if f.ByRun {
			name = withoutRunFolder(rel)
		}
		u := unit(name)
		u.Targets = append(u.Targets, storage.Join(f.Target, rel))
	}
	names := make([]string, 0, len(units))
	for rel := range units {
		names = append(names, rel)
	}
	sort.Strings(names)
	for _, rel := range names {
		emit(*units[rel])
	}
	return nil
}

// withoutRunFolder drops the run_id=<id>/ folder an --incremental
// reencrypt run puts its DEK table files in (see MintDEKsFn).
func withoutRunFolder(rel string) string {
	if strings.HasPrefix(rel, "run_id=") {
		if i := strings.IndexByte(rel, '/'); i > 0 {
			return rel[i+1:]
		}
	}
	return rel
}

// ListVerifyUnits is the composite: the units of source and target,
// redistributed so a distributed runner spreads them over workers.
func ListVerifyUnits(s beam.Scope, source, target string, byRun bool) beam.PCollection {
	s = s.Scope("ListVerifyUnits")
	units := beam.ParDo(s, &ListVerifyUnitsFn{Source: source, Target: target, ByRun: byRun}, beam.Impulse(s))
	return beam.Reshuffle(s, units)
}

func unitTargets(u VerifyUnit, emit func(string)) {
	for _, t := range u.Targets {
		emit(t)
	}
}

// dekState is how a source DEK fared at the target.
type dekState uint8

const (
	dekMissing dekState = iota // no target row names it (yet)
	dekOK                      // every target row for it unwraps
	dekFailed                  // a target row for it does not unwrap
)

// VerifyDEKsFn checks one DEK table unit: every target row unwraps with the
// target KEK, and (when a source is compared) every dek_id of the source
// file has its target row: the same dek_id for rewrap, its replacement
// NewDEKID(dek_id, run) for reencrypt (Renamed). A source DEK whose target
// rows come from several runs is migrated only if all of them unwrap.
type VerifyDEKsFn struct {
	Spec    VerifySpec
	Renamed bool
	kek     keys.KEK
	rs      *Spec     // Spec.records()
	tl      DEKLayout // the target DEK table's layout
}

// Setup opens the KEK (once per process).
func (f *VerifyDEKsFn) Setup(ctx context.Context) (err error) {
	f.rs = f.Spec.records()
	if f.kek, err = f.rs.openKEK(ctx, f.Spec.TargetKEK, f.Spec.TargetWrap); err != nil {
		return fmt.Errorf("KEK: %w", err)
	}
	f.tl = f.rs.targetLayout(f.kek)
	return nil
}

// ProcessElement verifies one DEK table unit.
func (f *VerifyDEKsFn) ProcessElement(ctx context.Context, u VerifyUnit, emit func(VerifyResult)) error {
	markStarted()
	compare := f.Spec.SourceDEKs != ""
	res := newVerifyResult(VerifyKindDEKs, f.Spec.TargetDEKs, u, compare)
	c := &res.Counts
	// The source file's dek_ids (one file's worth of memory).
	var src map[string]dekState
	if compare && u.Source != "" {
		src = map[string]dekState{}
		err := readDEKRowsIn(ctx, DEKLayout{Table: f.Spec.SourceTable}, u.Source, 4096, func(rows []schemas.DEKRow) error {
			for i := range rows {
				src[rows[i].DEKID] = dekMissing
			}
			return nil
		})
		if err != nil {
			res.unreadable(u.Source, fmt.Errorf("source DEK table file: %w", err))
			emit(res)
			return nil
		}
		c.Source = int64(len(src))
	}
	index := schemas.NewDEKIndex()
	targetUnreadable := false
	for ti, t := range u.Targets {
		err := readDEKRowsIn(ctx, f.tl, t, f.rs.rowBatch(), func(rows []schemas.DEKRow) error {
			errs := f.unwrapAll(ctx, rows)
			for i := range rows {
				r := &rows[i]
				if errs[i] != nil && isFatalKeyErr(errs[i]) {
					return errs[i]
				}
				// A table rekey wrote has no repeats either.
				if st := index.Add(ti, r); errs[i] == nil && st != schemas.DEKIDNew {
					errs[i] = fmt.Errorf("in the target DEK table: %w", st.Err(r.DEKID))
				}
				res.Read++
				res.Totals.DEKs++
				if errs[i] == nil {
					res.Verified++
					res.Totals.DEKsMigrated++
				} else {
					res.Totals.DEKsFailed++
					res.Totals.Failed++
				}
				c.Target++
				if !compare {
					if errs[i] == nil {
						c.Migrated++
					} else {
						c.Failed++
						res.note(t, "", r.DEKID, "failed: "+errs[i].Error())
					}
					continue
				}
				sid, ok := r.DEKID, true
				if f.Renamed {
					sid, _, ok = SourceDEKIDOf(r.DEKID)
				}
				st, in := src[sid]
				switch {
				case !ok:
					c.Extra++
					res.note(t, "", r.DEKID, fmt.Sprintf("extra: dek_id %q is in the target DEK table but is not the replacement of any source DEK (no @<run id> suffix)", r.DEKID))
				case !in:
					c.Extra++
					res.note(t, "", r.DEKID, fmt.Sprintf("extra: dek_id %q is in the target DEK table but %s", r.DEKID, notInSource(u.Source, "dek_id "+quote(sid))))
				case errs[i] != nil:
					src[sid] = dekFailed
					res.note(t, "", r.DEKID, "failed: "+errs[i].Error())
				case st == dekMissing:
					src[sid] = dekOK
				}
			}
			Progress.DEKs.Add(int64(len(rows)))
			return nil
		})
		if err != nil {
			if isFatalKeyErr(err) {
				return err
			}
			targetUnreadable = true
			res.unreadable(t, fmt.Errorf("target DEK table file: %w", err))
		}
	}
	var missing []string
	for id, st := range src {
		switch {
		case st == dekOK:
			c.Migrated++
		case st == dekFailed:
			c.Failed++
		case targetUnreadable:
			c.Failed++ // its target file is there but cannot be read
		default:
			c.Missing++
			missing = append(missing, id)
		}
	}
	if len(u.Targets) == 0 && c.Missing > 0 {
		// One note for the file, not one per DEK.
		res.note(u.Source, "", "", fmt.Sprintf("missing: there is no target DEK table file %s: the %d DEKs of %s are missing", res.Path, c.Missing, u.Source))
		missing = nil
	}
	sort.Strings(missing)
	for _, id := range missing {
		if len(res.Failures) >= maxFailureNotes {
			break
		}
		what := "is not in the target DEK table"
		if f.Renamed {
			what = "has no replacement (" + quote(NewDEKID(id, "<run id>")) + ") in the target DEK table"
		}
		res.note(u.Source, "", id, fmt.Sprintf("missing: dek_id %q of %s %s", id, u.Source, what))
	}
	Progress.Failed.Add(c.Failed + c.Missing + c.Extra)
	emit(res)
	return nil
}

func (f *VerifyDEKsFn) unwrapAll(ctx context.Context, rows []schemas.DEKRow) []error {
	errs := make([]error, len(rows))
	_ = parallel(len(rows), f.rs.KeyWorkers(), func(_, i int) error {
		r := &rows[i]
		if err := r.Validate(); err != nil {
			errs[i] = err
			return nil
		}
		if !keys.Matches(f.kek, r.KEK) {
			errs[i] = fmt.Errorf("dek_id %q is wrapped by %s, not by %s", r.DEKID, r.KEK, f.kek.URI())
			return nil
		}
		var dek *keys.DEK
		errs[i] = func() (err error) {
			dek, err = f.kek.Unwrap(ctx, TableBinding(f.tl.Table, r.DEKID), r.Wrap, r.Wrapped)
			return err
		}()
		if errs[i] == nil && len(r.KCV) > 0 {
			// Unwrapping is not enough: it must give back the right key.
			if err := schemas.CheckKCV(dek.Bytes(), r.DEKID, r.KCV); err != nil {
				errs[i] = fmt.Errorf("dek_id %q: the key unwrapped by %s does not match the row's key check value: %w", r.DEKID, f.kek.URI(), err)
			}
		}
		dek.Zero()
		return nil
	})
	return errs
}

func notInSource(source, what string) string {
	if source == "" {
		return "the source has no file of that name"
	}
	return what + " is not in the source file " + source
}

func quote(s string) string { return fmt.Sprintf("%q", s) }

// ReadDEKsFn emits the rows of one DEK table file, given by its full path
// (wrapped keys only).
type ReadDEKsFn struct {
	Layout DEKLayout // the target DEK table's
}

// ProcessElement reads DEK table file path.
func (f *ReadDEKsFn) ProcessElement(ctx context.Context, path string, emit func(schemas.DEKRow)) error {
	return readDEKRowsIn(ctx, f.Layout, path, 4096, func(rows []schemas.DEKRow) error {
		for _, r := range rows {
			r.Wrapped = bytes.Clone(r.Wrapped)
			emit(r)
		}
		return nil
	})
}

// VerifyFn checks one record file unit: every encrypted cell of the target
// file decrypts under the target DEK table (the side input) and KEK, and
// (when a source is compared) every record id of the source file is in the
// target file. Records are matched by id within the file, so memory holds
// one source file's ids, never a dataset's. When source and target are the
// same file (rewrap: the data stays where it is) its records are its own
// targets. It writes nothing but its result.
type VerifyFn struct {
	Spec VerifySpec

	rs    *Spec // Spec.records()
	kek   keys.KEK
	tf    format.Format // the target's cell format
	cache *keys.Cache
	deks  map[string]*schemas.DEKRow
	bad   map[string]string
}

// Setup opens the KEK (once per process).
func (f *VerifyFn) Setup(ctx context.Context) error {
	var err error
	f.rs = f.Spec.records()
	if _, f.tf, err = f.rs.Formats(); err != nil {
		return err
	}
	if f.kek, err = f.rs.openKEK(ctx, f.Spec.TargetKEK, f.Spec.TargetWrap); err != nil {
		return fmt.Errorf("KEK: %w", err)
	}
	f.cache = processCache(f.Spec.CacheSize)
	return nil
}

func (f *VerifyFn) load(iter func(*schemas.DEKRow) bool) {
	if f.deks != nil {
		return
	}
	f.deks, f.bad = map[string]*schemas.DEKRow{}, map[string]string{}
	app := format.TableOf(f.tf).App()
	var r schemas.DEKRow
	for iter(&r) {
		c := r
		if app {
			// An application's table names no KEK: its rows are the
			// target KEK's, with its mechanism.
			c.KEK, c.Wrap = f.kek.URI(), f.kek.Mechanism()
		}
		if err := c.Validate(); err != nil {
			f.bad[c.DEKID] = err.Error()
			continue
		}
		if prev, ok := f.deks[c.DEKID]; ok && !bytes.Equal(prev.Wrapped, c.Wrapped) {
			f.bad[c.DEKID] = fmt.Sprintf("dek_id %q appears more than once in the DEK table with different wrapped keys", c.DEKID)
		}
		f.deks[c.DEKID] = &c
	}
}

// ProcessElement verifies one record file unit.
func (f *VerifyFn) ProcessElement(ctx context.Context, u VerifyUnit, deks func(*schemas.DEKRow) bool, emit func(VerifyResult)) error {
	markStarted()
	f.load(deks)
	compare := f.Spec.SourceData != ""
	res := newVerifyResult(VerifyKindRecords, f.Spec.TargetData, u, compare)
	c := &res.Counts
	target := res.Path
	inPlace := compare && len(u.Targets) == 1 && u.Source == u.Targets[0]
	// remaining counts each source record id not matched yet.
	var remaining map[string]int32
	if compare && u.Source != "" && !inPlace {
		remaining = map[string]int32{}
		err := readRecordIDs(ctx, u.Source, f.Spec.IDColumn, func(id string, err error) {
			c.Source++
			if err != nil {
				c.Missing++
				res.note(u.Source, "", "", fmt.Sprintf("missing: a record of %s has no usable id (%v), so it has no target", u.Source, err))
				return
			}
			remaining[id]++
		})
		if err != nil {
			res.unreadable(u.Source, fmt.Errorf("source record file: %w", err))
			emit(res)
			return nil
		}
	}
	targetUnreadable := false
	if len(u.Targets) > 0 {
		err := f.checkFile(ctx, target, func(o *rowCheck) {
			res.Read++
			res.Totals.Records++
			ok := o.err == ""
			if ok {
				res.Verified++
				res.Totals.RecordsMigrated++
			} else {
				res.Totals.RecordsFailed++
				res.Totals.Failed++
			}
			c.Target++
			switch {
			case !compare || inPlace:
				if inPlace {
					c.Source++
				}
				if ok {
					c.Migrated++
				} else {
					c.Failed++
					res.note(target, o.id, o.dekID, "failed: "+o.err)
				}
			case o.hasID && remaining[o.id] > 0:
				remaining[o.id]--
				if ok {
					c.Migrated++
				} else {
					c.Failed++
					res.note(target, o.id, o.dekID, "failed: "+o.err)
				}
			default:
				c.Extra++
				what := "record " + quote(o.id) + " is in the target but " + notInSource(u.Source, "its id")
				if !o.hasID {
					what = "a record of the target has no usable id (" + o.err + ")"
				}
				res.note(target, o.id, o.dekID, "extra: "+what)
			}
		})
		if err != nil {
			if isFatalKeyErr(err) {
				return err
			}
			targetUnreadable = true
			res.unreadable(target, fmt.Errorf("target record file: %w", err))
		}
	}
	var missing []string
	for id, n := range remaining {
		if n == 0 {
			continue
		}
		if targetUnreadable {
			c.Failed += int64(n) // the target file is there but cannot be read
			continue
		}
		c.Missing += int64(n)
		missing = append(missing, id)
	}
	if len(u.Targets) == 0 && c.Missing > 0 {
		// One note for the file, not one per record.
		res.note(u.Source, "", "", fmt.Sprintf("missing: there is no target file %s: its %d records are missing", target, c.Missing))
		missing = nil
	}
	sort.Strings(missing)
	for _, id := range missing {
		if len(res.Failures) >= maxFailureNotes {
			break
		}
		res.note(u.Source, id, "", fmt.Sprintf("missing: record %q of %s is not in the target file %s", id, u.Source, target))
	}
	Progress.Files.Add(1)
	Progress.Failed.Add(c.Failed + c.Missing + c.Extra)
	emit(res)
	return nil
}

// rowCheck is the outcome of one target record.
type rowCheck struct {
	id, dekID string
	hasID     bool
	err       string // "" when every encrypted cell decrypts
}

// checkFile decrypts every encrypted cell of the record file at path and
// calls row for each record, in file order, on the calling goroutine.
func (f *VerifyFn) checkFile(ctx context.Context, path string, row func(*rowCheck)) error {
	pf, in, err := openParquet(ctx, path)
	if err != nil {
		return err
	}
	defer in.Close()
	l, err := layoutFor(pf.Schema(), f.rs, f.tf, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	names := leafNames(pf.Schema())
	workers := f.rs.workers()
	scratch := make([]cellScratch, workers)
	rows := make([]parquet.Row, f.rs.rowBatch())
	out := make([]rowCheck, len(rows))
	keysOf := map[string]*verifyKey{} // each DEK resolved once per file
	if l.keyCol {
		return f.checkKeyColumnFile(ctx, path, pf, &l, names, rows, out, scratch, row)
	}
	return readBatches(path, pf, rows, func(n int) error {
		missing := newDEKIDs(keysOf, rows[:n], l.dek)
		resolved := make([]*verifyKey, len(missing))
		_ = parallel(len(missing), workers, func(_, i int) error {
			resolved[i] = f.resolve(ctx, missing[i])
			return nil
		})
		for i, id := range missing {
			keysOf[id] = resolved[i]
			if resolved[i].fatal {
				return resolved[i].err
			}
		}
		_ = parallel(n, workers, func(w, i int) error {
			out[i] = rowCheck{}
			verify := f.verifyRow
			if l.dek < 0 {
				verify = func(l *recordLayout, row parquet.Row, sc *cellScratch, o *rowCheck, _ map[string]*verifyKey, names []string) error {
					return f.verifyCellKeys(ctx, l, row, sc, o, names)
				}
			}
			if e := verify(&l, rows[i], &scratch[w], &out[i], keysOf, names); e != nil {
				out[i].err = e.Error()
			}
			return nil
		})
		for i := 0; i < n; i++ {
			row(&out[i])
		}
		Progress.Records.Add(int64(n))
		return nil
	})
}

// readBatches reads the rows of pf (at path) batch by batch into rows and
// calls batch with each batch's length; an error of batch stops it.
func readBatches(path string, pf *parquet.File, rows []parquet.Row, batch func(n int) error) error {
	for _, rg := range pf.RowGroups() {
		rr := rg.Rows()
		for {
			n, rerr := rr.ReadRows(rows)
			if n > 0 {
				if err := batch(n); err != nil {
					rr.Close()
					return err
				}
			}
			if errors.Is(rerr, io.EOF) {
				break
			}
			if rerr != nil {
				rr.Close()
				return fmt.Errorf("read %s: %w", path, rerr)
			}
		}
		rr.Close()
	}
	return nil
}

// maxColumnKeys bounds the wrapped keys a key-column verify keeps unwrapped
// for one file: past it they are zeroed and dropped (applications that
// write a key per row reuse none of them).
const maxColumnKeys = 4096

// checkKeyColumnFile is checkFile for a format whose wrapped keys are in a
// column of the records (aes-gcm keys: column): each distinct wrapped key
// of a batch (with its binding) is unwrapped once by the target KEK, in
// parallel, and every encrypted cell of its records is opened with it.
func (f *VerifyFn) checkKeyColumnFile(ctx context.Context, path string, pf *parquet.File, l *recordLayout, names []string,
	rows []parquet.Row, out []rowCheck, scratch []cellScratch, row func(*rowCheck)) error {
	workers := f.rs.workers()
	nameOf := func(c int) string { return names[c] }
	keysOf := map[string]*verifyKey{}
	defer func() {
		for _, vk := range keysOf {
			vk.zero()
		}
	}()
	type fresh struct {
		key  string
		blob []byte
		b    keys.Binding
	}
	rowKey := make([]string, len(rows))
	return readBatches(path, pf, rows, func(n int) error {
		if len(keysOf) > maxColumnKeys {
			for k, vk := range keysOf {
				vk.zero()
				delete(keysOf, k)
			}
		}
		var todo []fresh
		var fields []string
		for i := 0; i < n; i++ {
			out[i], rowKey[i] = rowCheck{}, ""
			r := rows[i]
			iv, kv := findValue(r, l.id), findValue(r, l.dek)
			if iv < 0 || kv < 0 {
				out[i].err = "row has no value for the record id or wrapped-key column"
				continue
			}
			id, err := recordID(r[iv])
			if err != nil {
				out[i].err = err.Error()
				continue
			}
			out[i].id, out[i].hasID = id, true
			if r[kv].IsNull() {
				out[i].err = fmt.Sprintf("record %q has a null wrapped key in column %q", id, names[l.dek])
				continue
			}
			if fields, err = rowFields(fields, r, l.needs, l.needsNull, nameOf); err != nil {
				out[i].err = fmt.Sprintf("record %q: %v", id, err)
				continue
			}
			key, blob, b, err := columnKey(f.tf, r[kv].ByteArray(), fields)
			if err != nil {
				out[i].err = fmt.Sprintf("record %q: column %q: %v", id, names[l.dek], err)
				continue
			}
			rowKey[i], out[i].dekID = key, keyName(key)
			if _, ok := keysOf[key]; !ok {
				keysOf[key] = nil
				todo = append(todo, fresh{key, blob, b})
			}
		}
		got := make([]*verifyKey, len(todo))
		_ = parallel(len(todo), workers, func(_, i int) error {
			got[i] = f.resolveColumnKey(ctx, todo[i].b, todo[i].blob)
			return nil
		})
		for i, t := range todo {
			keysOf[t.key] = got[i]
		}
		for _, vk := range got {
			if vk.fatal {
				return vk.err
			}
		}
		_ = parallel(n, workers, func(w, i int) error {
			if out[i].err != "" {
				return nil
			}
			if e := f.openRecord(l, rows[i], &scratch[w], &out[i], keysOf[rowKey[i]], "", names); e != nil {
				out[i].err = e.Error()
			}
			return nil
		})
		for i := 0; i < n; i++ {
			row(&out[i])
		}
		Progress.Records.Add(int64(n))
		return nil
	})
}

// resolveColumnKey unwraps a wrapped key kept in a column, bound to b,
// with the target KEK.
func (f *VerifyFn) resolveColumnKey(ctx context.Context, b keys.Binding, blob []byte) *verifyKey {
	dek, err := f.kek.Unwrap(ctx, b, f.kek.Mechanism(), blob)
	if err != nil {
		return &verifyKey{err: fmt.Errorf("the wrapped key does not unwrap with the target KEK: %w", err), fatal: isFatalKeyErr(err)}
	}
	aead, err := f.tf.Cipher(dek.Bytes())
	if err != nil {
		dek.Zero()
		return &verifyKey{err: err}
	}
	return &verifyKey{key: &cachedKey{dek: dek}, aead: aead, own: true}
}

// openRecord opens every encrypted cell of one record (its id already in
// o) with vk; dekID is the cell's dek_id when its key is in a DEK table.
func (f *VerifyFn) openRecord(l *recordLayout, row parquet.Row, sc *cellScratch, o *rowCheck, vk *verifyKey, dekID string, names []string) error {
	if vk.err != nil {
		return fmt.Errorf("record %q: %w", o.id, vk.err)
	}
	var err error
	if sc.fields, err = rowFields(sc.fields, row, l.needs, l.needsNull, func(c int) string { return names[c] }); err != nil {
		return fmt.Errorf("record %q: %w", o.id, err)
	}
	sc.cell = format.Cell{RecordID: o.id, DEKID: dekID, Fields: sc.fields, AAD: sc.cell.AAD}
	for k, col := range l.enc {
		vi := findValue(row, col)
		if vi < 0 || row[vi].IsNull() {
			continue
		}
		sc.cell.Column = l.encName[k]
		pt, err := f.tf.Open(sc.pt[:0], vk.aead, row[vi].ByteArray(), &sc.cell)
		sc.pt = pt
		clear(pt)
		if err != nil {
			return fmt.Errorf("record %q column %q: %w", o.id, l.encName[k], err)
		}
	}
	return nil
}

// verifyKey is one DEK of the table, resolved for a file: its key, or why
// its records cannot verify.
type verifyKey struct {
	key   *cachedKey
	aead  cipher.AEAD // the format's cell cipher
	err   error
	fatal bool // the custodian refuses us: stop
	own   bool // key is not in the process cache: zero it when done
}

// zero wipes vk's key when vk owns it (a cached key is the cache's).
func (vk *verifyKey) zero() {
	if vk != nil && vk.own && vk.key != nil {
		vk.key.dek.Zero()
	}
}

func (f *VerifyFn) resolve(ctx context.Context, dekID string) *verifyKey {
	if why, bad := f.bad[dekID]; bad {
		return &verifyKey{err: fmt.Errorf("DEK %q: %s", dekID, why)}
	}
	d := f.deks[dekID]
	if d == nil {
		return &verifyKey{err: fmt.Errorf("names dek_id %q, which is not in the target DEK table", dekID)}
	}
	if !keys.Matches(f.kek, d.KEK) {
		return &verifyKey{err: fmt.Errorf("DEK %q is wrapped by %s, not by %s", dekID, d.KEK, f.kek.URI())}
	}
	key, err := unwrapCached(ctx, f.cache, f.kek, TableBinding(format.TableOf(f.tf), d.DEKID), d.Wrap, d.Wrapped)
	if err != nil {
		return &verifyKey{err: fmt.Errorf("unwrap DEK %q: %w", dekID, err), fatal: isFatalKeyErr(err)}
	}
	aead, err := cellCipher(f.tf, key)
	if err != nil {
		return &verifyKey{err: fmt.Errorf("DEK %q: %w", dekID, err)}
	}
	return &verifyKey{key: key, aead: aead}
}

func (f *VerifyFn) verifyRow(l *recordLayout, row parquet.Row, sc *cellScratch, o *rowCheck, keysOf map[string]*verifyKey, names []string) error {
	iv, dv := findValue(row, l.id), findValue(row, l.dek)
	if iv < 0 || dv < 0 {
		return fmt.Errorf("row has no value for the record id or dek_id column")
	}
	var err error
	if o.id, err = recordID(row[iv]); err != nil {
		return err
	}
	o.hasID = true
	if row[dv].IsNull() {
		return fmt.Errorf("record %q has a null dek_id", o.id)
	}
	o.dekID = string(row[dv].ByteArray())
	return f.openRecord(l, row, sc, o, keysOf[o.dekID], o.dekID, names)
}

// verifyCellKeys checks a record whose cells carry their own wrapped DEKs
// (tink-envelope): each cell's DEK unwraps with the target KEK and opens
// the cell.
func (f *VerifyFn) verifyCellKeys(ctx context.Context, l *recordLayout, row parquet.Row, sc *cellScratch, o *rowCheck, names []string) error {
	iv := findValue(row, l.id)
	if iv < 0 {
		return fmt.Errorf("row has no value for the record id column")
	}
	var err error
	if o.id, err = recordID(row[iv]); err != nil {
		return err
	}
	o.hasID = true
	if sc.fields, err = rowFields(sc.fields, row, l.needs, l.needsNull, func(c int) string { return names[c] }); err != nil {
		return fmt.Errorf("record %q: %w", o.id, err)
	}
	for k, col := range l.enc {
		vi := findValue(row, col)
		if vi < 0 || row[vi].IsNull() {
			continue
		}
		cell := row[vi].ByteArray()
		c := &format.Cell{Column: l.encName[k], RecordID: o.id, Fields: sc.fields}
		blob, err := f.tf.DecodeKey(cell)
		if err != nil {
			return fmt.Errorf("record %q column %q: %w", o.id, l.encName[k], err)
		}
		fb, err := f.tf.Binding(c)
		if err != nil {
			return fmt.Errorf("record %q column %q: %w", o.id, l.encName[k], err)
		}
		dek, err := f.kek.Unwrap(ctx, keys.Binding{DEKID: fb.DEKID, Context: fb.Context}, f.kek.Mechanism(), blob)
		if err != nil {
			return fmt.Errorf("record %q column %q: the cell's DEK does not unwrap with the target KEK: %w", o.id, l.encName[k], err)
		}
		aead, err := f.tf.Cipher(dek.Bytes())
		dek.Zero()
		if err != nil {
			return fmt.Errorf("record %q column %q: %w", o.id, l.encName[k], err)
		}
		pt, err := f.tf.Open(sc.pt[:0], aead, cell, c)
		sc.pt = pt
		clear(pt)
		if err != nil {
			return fmt.Errorf("record %q column %q: %w", o.id, l.encName[k], err)
		}
	}
	return nil
}

// readRecordIDs streams the record ids of one record file, reading the id
// column only (no cell is read or decrypted). fn gets each id, or why a
// row has none.
func readRecordIDs(ctx context.Context, path, idCol string, fn func(id string, err error)) error {
	pf, in, err := openParquet(ctx, path)
	if err != nil {
		return err
	}
	defer in.Close()
	c, ok := pf.Schema().Lookup(idCol)
	if !ok {
		return fmt.Errorf("%s: no column %q (the record id column is set with columns.record_id or --id-column)", path, idCol)
	}
	if c.MaxRepetitionLevel > 0 {
		return fmt.Errorf("%s: column %q is repeated; rekey handles flat columns only", path, idCol)
	}
	if !idKinds[c.Node.Type().Kind()] {
		return fmt.Errorf("%s: record id column %q is %s; rekey takes INT32, INT64, BYTE_ARRAY or FIXED_LEN_BYTE_ARRAY ids (see docs/FORMAT.md)", path, idCol, c.Node.Type())
	}
	buf := make([]parquet.Value, 1024)
	for _, rg := range pf.RowGroups() {
		if err := ctx.Err(); err != nil {
			return err
		}
		cur := &columnCursor{pages: rg.ColumnChunks()[c.ColumnIndex].Pages()}
		for {
			n, rerr := cur.read(buf)
			for i := 0; i < n; i++ {
				fn(recordID(buf[i]))
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				cur.pages.Close()
				return fmt.Errorf("read %s: %w", path, rerr)
			}
		}
		cur.pages.Close()
	}
	return nil
}

// Verify is the verify composite. spec.Target* is what is checked: every
// DEK row of spec.TargetDEKs unwraps with spec.TargetKEK, and every
// encrypted cell under spec.TargetData (if set) decrypts with that table.
//
// With spec.SourceDEKs (and spec.SourceData) set, the source is counted
// and matched with the target, file by file under the same relative name:
// for spec.Match rewrap the target DEK table holds the source's dek_ids and
// the records are checked where they are (spec.SourceData ==
// spec.TargetData); for reencrypt each source dek_id X has its replacement
// NewDEKID(X, run) (also under run_id=<id>/ folders of --incremental runs)
// and each source record file has a target file with the same record ids.
// Without a source, the target alone is checked: what it lacks goes unseen.
func Verify(s beam.Scope, spec VerifySpec) beam.PCollection {
	s = s.Scope("Verify")
	if objfmt.Known(spec.TargetFormat) {
		return beam.ParDo(s, &VerifyObjectsFn{Spec: spec}, ListObjects(s, spec.TargetData))
	}
	if tf, err := format.New(spec.TargetFormat, spec.TargetFormatOptions); err == nil && tf.Keys() != format.KeyTable {
		// No DEK table: every cell, or every record's key column, carries
		// its wrapped DEK.
		recUnits := ListVerifyUnits(s.Scope("Records"), spec.SourceData, spec.TargetData, false)
		return beam.ParDo(s, &VerifyFn{Spec: spec}, recUnits, beam.SideInput{Input: beam.CreateList(s, []schemas.DEKRow{})})
	}
	renamed := spec.Match == schemas.ModeReencrypt && spec.SourceDEKs != ""
	dekUnits := ListVerifyUnits(s.Scope("DEKTable"), spec.SourceDEKs, spec.TargetDEKs, renamed)
	dekResults := beam.ParDo(s, &VerifyDEKsFn{Spec: spec, Renamed: renamed}, dekUnits)
	if spec.TargetData == "" {
		return dekResults
	}
	tables := beam.ParDo(s, unitTargets, dekUnits)
	deks := beam.ParDo(s, &ReadDEKsFn{Layout: spec.records().targetLayout(nil)}, tables)
	recUnits := ListVerifyUnits(s.Scope("Records"), spec.SourceData, spec.TargetData, false)
	recResults := beam.ParDo(s, &VerifyFn{Spec: spec}, recUnits, beam.SideInput{Input: deks})
	return beam.Flatten(s, dekResults, recResults)
}
