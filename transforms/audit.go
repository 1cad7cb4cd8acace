package transforms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/parquet-go/parquet-go"

	"rekey/providers/keys"
	"rekey/providers/storage"
	"rekey/schemas"
)

// The audit answers one question from data alone: does anything in these
// DEK tables and datasets still depend on this KEK? It never opens a key:
// it reads the kek column of the DEK tables and the dek_id column of the
// record files, and joins them by dek_id (only ids are shuffled).

func init() {
	register.DoFn4x1[context.Context, string, func(string, AuditDEK), func(AuditPart), error](&AuditDEKsFn{})
	register.DoFn5x1[context.Context, string, func(*string) bool, func(string, AuditRecords), func(AuditPart), error](&AuditRecordsFn{})
	register.Function3x0[string, AuditDEK, func(string)](matchedDEKID)
	register.Iter1[string]()
	register.DoFn4x0[string, func(*AuditDEK) bool, func(*AuditRecords) bool, func(AuditPart)](&AuditJoinFn{})
	register.DoFn3x1[context.Context, []byte, func(*AuditPart) bool, error](&WriteAuditReportFn{})
	register.Combiner1[AuditPart](&AuditMergeFn{})
	register.Emitter2[string, AuditDEK]()
	register.Emitter2[string, AuditRecords]()
	register.Emitter1[AuditPart]()
	register.Iter1[AuditDEK]()
	register.Iter1[AuditRecords]()
	register.Iter1[AuditPart]()
}

// Audit verdicts.
const (
	AuditClear        = "clear"        // nothing read references the KEK, and everything was read
	AuditReferenced   = "referenced"   // some DEK (and maybe records) still references the KEK
	AuditInconclusive = "inconclusive" // nothing found, but something could not be read or resolved
)

// AuditReportFormat identifies the JSON report of rekey audit.
const AuditReportFormat = "rekey-audit/1"

// DefaultAuditRecordIDs is how many referencing record ids the report lists
// by default (counts are always complete).
const DefaultAuditRecordIDs = 1000

// maxAuditProblems caps the problem notes kept (ProblemCount has them all).
const maxAuditProblems = 100

// AuditSpec configures an audit. KEK is a key reference without secrets
// (what a DEK table's kek column holds); the audit opens no key.
type AuditSpec struct {
	KEK       string
	DEKTables []string
	Datasets  []string
	DEKColumn string
	IDColumn  string
	Report    string // where the JSON report goes
	// MaxRecordIDs caps the referencing record ids listed in the report:
	// 0 is DefaultAuditRecordIDs, negative lists every one.
	MaxRecordIDs int
}

// Validate names the first field that cannot work.
func (a *AuditSpec) Validate() error {
	switch {
	case a.KEK == "":
		return errors.New("audit: kek: missing (the key reference to look for, e.g. pkcs11:token=old;object=kek-1)")
	case len(a.DEKTables) == 0:
		return errors.New("audit: deks: give at least one DEK table (records are resolved to KEKs through it)")
	case a.DEKColumn == "" || a.IDColumn == "":
		return errors.New("audit: dek_id and record id column names must not be empty")
	case a.Report == "":
		return errors.New("audit: report: missing (where the JSON report goes)")
	}
	for _, loc := range append(append([]string{}, a.DEKTables...), a.Datasets...) {
		if loc == "" {
			return errors.New("audit: an empty DEK table or dataset location was given")
		}
		if _, err := storage.For(loc); err != nil {
			return fmt.Errorf("audit: %w", err)
		}
	}
	return nil
}

func (a *AuditSpec) maxIDs() int {
	if a.MaxRecordIDs == 0 {
		return DefaultAuditRecordIDs
	}
	return a.MaxRecordIDs
}

// KEK references can be spelled more than one way (attribute order, percent
// escapes, a module-path or pin-source query). A key backend whose
// references are not compared byte for byte registers a comparison for its
// URI scheme; same reports whether ref names the key kek names, and an error
// when ref is not a valid reference of that scheme (the audit then cannot
// prove anything about that row, and says so).
// SameKEKRef reports whether the DEK table reference ref names kek, by
// the scheme's own comparison (keys.SameRef): module paths, PIN sources and
// credentials do not change which key it is.
func SameKEKRef(ref, kek string) (bool, error) { return keys.SameRef(ref, kek) }

// AuditDEK is one DEK table row, reduced to what the audit needs (no
// wrapped key).
type AuditDEK struct {
	Table string // DEK table file
	KEK   string
	Wrap  string
	Match bool // wrapped by the audited KEK
}

// AuditRecords counts the records of one file that name one dek_id.
type AuditRecords struct {
	File  string
	Count int64
	IDs   []string // the first ones, up to the report's cap
}

// AuditDEKRef is a DEK wrapped by the audited KEK, with the records that
// use it.
type AuditDEKRef struct {
	DEKID   string   `json:"dek_id"`
	KEK     string   `json:"kek"`
	Wrap    string   `json:"wrap"`
	Tables  []string `json:"dek_table_files"`
	Records int64    `json:"records"`
}

// AuditFileRef is a record file with records that depend on the KEK.
type AuditFileRef struct {
	Path    string `json:"path"`
	Records int64  `json:"records"`
}

// AuditRecordRef is one record that depends on the KEK or, in the
// unresolved list, a file's records that name one dek_id found in none of
// the DEK tables (RecordID empty, Records their count).
type AuditRecordRef struct {
	File     string `json:"file"`
	RecordID string `json:"record_id,omitempty"`
	DEKID    string `json:"dek_id"`
	Records  int64  `json:"records,omitempty"`
}

// AuditPart is a partial audit result; parts merge into the report.
type AuditPart struct {
	Roots       map[string]int64 // DEK table or dataset root -> Parquet files read
	DEKFiles    int64
	DataFiles   int64
	DEKs        int64            // DEK table rows
	DEKsByKEK   map[string]int64 // kek reference (as written) -> DEK rows
	Records     int64
	DEKRefs     []AuditDEKRef
	FileRefs    map[string]int64 // record file -> records depending on the KEK
	RefRecords  int64
	RecordIDs   []AuditRecordRef
	Unresolved  int64 // records whose dek_id is in no DEK table
	UnresSample []AuditRecordRef
	Problems    []string
	ProblemN    int64
}

func (p *AuditPart) problem(format string, a ...any) {
	p.ProblemN++
	if len(p.Problems) < maxAuditProblems {
		p.Problems = append(p.Problems, fmt.Sprintf(format, a...))
	}
}

// merge adds o into p, keeping at most maxIDs record ids (negative: all).
func (p *AuditPart) merge(o AuditPart, maxIDs int) {
	p.Roots = addCounts(p.Roots, o.Roots)
	p.DEKsByKEK = addCounts(p.DEKsByKEK, o.DEKsByKEK)
	p.FileRefs = addCounts(p.FileRefs, o.FileRefs)
	p.DEKFiles += o.DEKFiles
	p.DataFiles += o.DataFiles
	p.DEKs += o.DEKs
	p.Records += o.Records
	p.DEKRefs = append(p.DEKRefs, o.DEKRefs...)
	p.RefRecords += o.RefRecords
	p.RecordIDs = appendCapped(p.RecordIDs, o.RecordIDs, maxIDs)
	p.Unresolved += o.Unresolved
	p.UnresSample = appendCapped(p.UnresSample, o.UnresSample, maxAuditProblems)
	p.ProblemN += o.ProblemN
	p.Problems = appendCapped(p.Problems, o.Problems, maxAuditProblems)
}

func addCounts(dst, src map[string]int64) map[string]int64 {
	if len(src) == 0 {
		return dst
	}
	if dst == nil {
		dst = map[string]int64{}
	}
	for k, v := range src {
		dst[k] += v
	}
	return dst
}

func appendCapped[T any](dst, src []T, max int) []T {
	if max < 0 {
		return append(dst, src...)
	}
	if room := max - len(dst); room < len(src) {
		if room <= 0 {
			return dst
		}
		src = src[:room]
	}
	return append(dst, src...)
}

// AuditDEKsFn reads one DEK table file and emits every row's dek_id with
// its KEK reference and whether that is the audited KEK.
type AuditDEKsFn struct {
	Spec AuditSpec
	Root string
}

// ProcessElement audits DEK table file rel.
func (f *AuditDEKsFn) ProcessElement(ctx context.Context, rel string, emit func(string, AuditDEK), emitPart func(AuditPart)) error {
	path := storage.Join(f.Root, rel)
	part := AuditPart{Roots: map[string]int64{f.Root: 1}, DEKFiles: 1, DEKsByKEK: map[string]int64{}}
	err := readDEKRows(ctx, path, 4096, func(rows []schemas.DEKRow) error {
		for i := range rows {
			r := &rows[i]
			part.DEKs++
			if r.DEKID == "" || r.KEK == "" {
				part.problem("%s: a row has an empty dek_id or kek: cannot tell what it references", path)
				continue
			}
			match, err := SameKEKRef(r.KEK, f.Spec.KEK)
			if err != nil {
				part.problem("%s: dek_id %q: kek %q is not a valid key reference: %v", path, r.DEKID, redactKEK(r.KEK), err)
			}
			part.DEKsByKEK[redactKEK(r.KEK)]++
			emit(r.DEKID, AuditDEK{Table: path, KEK: redactKEK(r.KEK), Wrap: r.Wrap, Match: match})
		}
		return nil
	})
	if err != nil {
		part.problem("%s: %v", path, err)
		cntFailed.Inc(ctx, 1)
	}
	cntFiles.Inc(ctx, 1)
	cntDEKs.Inc(ctx, part.DEKs)
	Progress.Files.Add(1)
	Progress.DEKs.Add(part.DEKs)
	emitPart(part)
	return nil
}

// AuditRecordsFn reads the dek_id and record id columns (only those) of
// one record file and emits, per dek_id, how many records name it. Record
// ids are kept only for the records whose DEK is wrapped by the audited KEK
// (the side input), at most the report's cap per file: an audit that finds
// nothing shuffles counts, not ids.
type AuditRecordsFn struct {
	Spec AuditSpec
	Root string

	matching map[string]bool
}

func (f *AuditRecordsFn) load(iter func(*string) bool) {
	if f.matching != nil {
		return
	}
	f.matching = map[string]bool{}
	var id string
	for iter(&id) {
		f.matching[id] = true
	}
}

// ProcessElement audits record file rel.
func (f *AuditRecordsFn) ProcessElement(ctx context.Context, rel string, matching func(*string) bool, emit func(string, AuditRecords), emitPart func(AuditPart)) error {
	f.load(matching)
	path := storage.Join(f.Root, rel)
	part := AuditPart{Roots: map[string]int64{f.Root: 1}, DataFiles: 1}
	byDEK := map[string]*AuditRecords{}
	var order []string
	maxIDs, kept := f.Spec.maxIDs(), 0
	err := readKeyColumns(ctx, path, f.Spec.DEKColumn, f.Spec.IDColumn, func(dekID, id string) {
		part.Records++
		a := byDEK[dekID]
		if a == nil {
			a = &AuditRecords{File: path}
			byDEK[dekID] = a
			order = append(order, dekID)
		}
		a.Count++
		if f.matching[dekID] && (maxIDs < 0 || kept < maxIDs) {
			a.IDs = append(a.IDs, id)
			kept++
		}
	})
	if err != nil {
		part.problem("%s: %v", path, err)
		cntFailed.Inc(ctx, 1)
	}
	for _, d := range order {
		emit(d, *byDEK[d])
	}
	cntFiles.Inc(ctx, 1)
	cntRecords.Inc(ctx, part.Records)
	Progress.Files.Add(1)
	Progress.Records.Add(part.Records)
	emitPart(part)
	return nil
}

// matchedDEKID keeps the dek_ids of DEK rows wrapped by the audited KEK.
func matchedDEKID(dekID string, d AuditDEK, emit func(string)) {
	if d.Match {
		emit(dekID)
	}
}

// readKeyColumns calls fn with the dek_id and record id of every row of a
// record file, reading only those two column chunks (no payload bytes).
func readKeyColumns(ctx context.Context, path, dekCol, idCol string, fn func(dekID, id string)) error {
	pf, f, err := openParquet(ctx, path)
	if err != nil {
		return err
	}
	defer f.Close()
	leaf := func(name string) (int, error) {
		c, ok := pf.Schema().Lookup(name)
		if !ok {
			return 0, fmt.Errorf("no column %q (set the dek_id / record id column names)", name)
		}
		if c.MaxRepetitionLevel > 0 {
			return 0, fmt.Errorf("column %q is repeated; rekey handles flat columns only", name)
		}
		return c.ColumnIndex, nil
	}
	dc, err := leaf(dekCol)
	if err != nil {
		return err
	}
	ic, err := leaf(idCol)
	if err != nil {
		return err
	}
	const batch = 1024
	dv, iv := make([]parquet.Value, batch), make([]parquet.Value, batch)
	for g, rg := range pf.RowGroups() {
		chunks := rg.ColumnChunks()
		dcur := &columnCursor{pages: chunks[dc].Pages()}
		icur := &columnCursor{pages: chunks[ic].Pages()}
		err := func() error {
			defer dcur.pages.Close()
			defer icur.pages.Close()
			for {
				if err := ctx.Err(); err != nil {
					return err
				}
				n, derr := dcur.read(dv)
				m, ierr := icur.read(iv[:n])
				if m != n {
					return fmt.Errorf("row group %d: column %q has more values than column %q", g, dekCol, idCol)
				}
				for i := 0; i < n; i++ {
					if dv[i].IsNull() {
						id, _ := recordID(iv[i])
						return fmt.Errorf("row group %d: record %q has a null %s", g, id, dekCol)
					}
					id, err := recordID(iv[i])
					if err != nil {
						return fmt.Errorf("row group %d: %w", g, err)
					}
					fn(string(dv[i].ByteArray()), id)
				}
				if derr == io.EOF {
					if _, err := icur.read(iv[:1]); err != io.EOF {
						return fmt.Errorf("row group %d: column %q has more values than column %q", g, idCol, dekCol)
					}
					return nil
				}
				if derr != nil {
					return fmt.Errorf("read %s: %w", dekCol, derr)
				}
				if ierr != nil && ierr != io.EOF {
					return fmt.Errorf("read %s: %w", idCol, ierr)
				}
			}
		}()
		if err != nil {
			return err
		}
	}
	return nil
}

// columnCursor reads the values of one column chunk across its pages.
type columnCursor struct {
	pages parquet.Pages
	vr    parquet.ValueReader
	done  bool
}

// read fills buf as far as the chunk allows; io.EOF once it is exhausted.
func (c *columnCursor) read(buf []parquet.Value) (int, error) {
	n := 0
	for n < len(buf) {
		if c.done {
			return n, io.EOF
		}
		if c.vr == nil {
			p, err := c.pages.ReadPage()
			if err == io.EOF {
				c.done = true
				continue
			}
			if err != nil {
				return n, err
			}
			c.vr = p.Values()
		}
		k, err := c.vr.ReadValues(buf[n:])
		n += k
		if err == io.EOF {
			c.vr = nil
			continue
		}
		if err != nil {
			return n, err
		}
	}
	if c.done {
		return n, io.EOF
	}
	return n, nil
}

// AuditJoinFn resolves one dek_id: the DEK rows that carry it and the
// records that name it.
type AuditJoinFn struct {
	Spec AuditSpec
}

// ProcessElement joins one dek_id.
func (f *AuditJoinFn) ProcessElement(dekID string, deks func(*AuditDEK) bool, recs func(*AuditRecords) bool, emit func(AuditPart)) {
	var rows []AuditDEK
	var d AuditDEK
	for deks(&d) {
		rows = append(rows, d)
	}
	var refs []AuditRecords
	var r AuditRecords
	for recs(&r) {
		refs = append(refs, r)
		r = AuditRecords{}
	}
	var part AuditPart
	var n int64
	for _, x := range refs {
		n += x.Count
	}
	if len(rows) == 0 {
		// Records name a dek_id that no DEK table has: listed by file
		// (their ids are not shipped; the file and dek_id locate them).
		if n > 0 {
			part.Unresolved = n
			for _, x := range refs {
				part.UnresSample = appendCapped(part.UnresSample, []AuditRecordRef{{File: x.File, DEKID: dekID, Records: x.Count}}, maxAuditProblems)
			}
		}
		emit(part)
		return
	}
	// One entry per (kek, wrap) among the matching rows: a dek_id wrapped
	// by the audited KEK in two tables is one DEK listed with both files.
	byKey := map[string]*AuditDEKRef{}
	var keysInOrder []string
	for _, x := range rows {
		if !x.Match {
			continue
		}
		k := x.KEK + "\x00" + x.Wrap
		ref := byKey[k]
		if ref == nil {
			ref = &AuditDEKRef{DEKID: dekID, KEK: x.KEK, Wrap: x.Wrap, Records: n}
			byKey[k] = ref
			keysInOrder = append(keysInOrder, k)
		}
		ref.Tables = append(ref.Tables, x.Table)
	}
	if len(byKey) == 0 {
		emit(part)
		return
	}
	for _, k := range keysInOrder {
		sort.Strings(byKey[k].Tables)
		part.DEKRefs = append(part.DEKRefs, *byKey[k])
	}
	part.RefRecords = n
	maxIDs := f.Spec.maxIDs()
	for _, x := range refs {
		part.FileRefs = addCounts(part.FileRefs, map[string]int64{x.File: x.Count})
		for _, id := range x.IDs {
			if maxIDs >= 0 && len(part.RecordIDs) >= maxIDs {
				break
			}
			part.RecordIDs = append(part.RecordIDs, AuditRecordRef{File: x.File, RecordID: id, DEKID: dekID})
		}
	}
	emit(part)
}

// AuditMergeFn merges audit parts.
type AuditMergeFn struct {
	MaxRecordIDs int // as AuditSpec.MaxRecordIDs
}

// MergeAccumulators merges b into a.
func (f *AuditMergeFn) MergeAccumulators(a, b AuditPart) AuditPart {
	max := f.MaxRecordIDs
	if max == 0 {
		max = DefaultAuditRecordIDs
	}
	a.merge(b, max)
	return a
}

// AuditTotals are the counts of an audit report.
type AuditTotals struct {
	DEKTableFiles      int64 `json:"dek_table_files"`
	DEKs               int64 `json:"deks"`
	DEKsReferencing    int64 `json:"deks_referencing_kek"`
	RecordFiles        int64 `json:"record_files"`
	Records            int64 `json:"records"`
	RecordsReferencing int64 `json:"records_referencing_kek"`
	FilesReferencing   int64 `json:"record_files_referencing_kek"`
	RecordsUnresolved  int64 `json:"records_with_unknown_dek"`
	Problems           int64 `json:"problems"`
}

// AuditReport is what rekey audit writes.
type AuditReport struct {
	Format    string      `json:"format"`
	KEK       string      `json:"kek"`
	Verdict   string      `json:"verdict"`
	Reason    string      `json:"reason"`
	DEKTables []string    `json:"dek_tables"`
	Datasets  []string    `json:"datasets"`
	Finished  time.Time   `json:"finished"`
	Totals    AuditTotals `json:"totals"`
	// DEKsByKEK is every key reference found in the DEK tables and how
	// many rows it wraps: an inventory, so a reference spelled in a way
	// the audit did not recognise is at least visible.
	DEKsByKEK map[string]int64 `json:"deks_by_kek"`
	// DEKs lists every DEK wrapped by the audited KEK.
	DEKs []AuditDEKRef `json:"deks"`
	// Files lists every record file with records whose DEK is wrapped by
	// the audited KEK.
	Files []AuditFileRef `json:"record_files"`
	// Records lists referencing records, up to the cap; RecordsComplete
	// says whether the list has all of them.
	Records         []AuditRecordRef `json:"records"`
	RecordsComplete bool             `json:"records_complete"`
	// Unresolved lists (file, dek_id) pairs whose dek_id is in none of the
	// DEK tables, with their record counts (the first 100).
	Unresolved []AuditRecordRef `json:"records_with_unknown_dek,omitempty"`
	Problems   []string         `json:"problems,omitempty"`
}

// WriteAuditReportFn merges every part (a side input, so an audit that
// read nothing still reports) and writes the JSON report.
type WriteAuditReportFn struct {
	Spec AuditSpec
}

// ProcessElement writes the report once.
func (f *WriteAuditReportFn) ProcessElement(ctx context.Context, _ []byte, parts func(*AuditPart) bool) error {
	var all AuditPart
	var p AuditPart
	for parts(&p) {
		all.merge(p, f.Spec.maxIDs())
		p = AuditPart{}
	}
	rep := BuildAuditReport(f.Spec, all)
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	w, err := storage.Create(ctx, f.Spec.Report)
	if err != nil {
		return fmt.Errorf("audit report %s: %w", f.Spec.Report, err)
	}
	if _, err := w.Write(append(b, '\n')); err != nil {
		_ = w.Abort()
		return fmt.Errorf("audit report %s: %w", f.Spec.Report, err)
	}
	return w.Commit()
}

// BuildAuditReport turns the merged parts into the report and its verdict.
func BuildAuditReport(spec AuditSpec, all AuditPart) AuditReport {
	rep := AuditReport{Format: AuditReportFormat, KEK: redactKEK(spec.KEK), DEKTables: spec.DEKTables, Datasets: spec.Datasets,
		Finished: time.Now().UTC(), DEKsByKEK: all.DEKsByKEK, DEKs: all.DEKRefs, Records: all.RecordIDs,
		Unresolved: all.UnresSample, Problems: all.Problems}
	if rep.DEKsByKEK == nil {
		rep.DEKsByKEK = map[string]int64{}
	}
	sort.Slice(rep.DEKs, func(i, j int) bool { return rep.DEKs[i].DEKID < rep.DEKs[j].DEKID })
	for path, n := range all.FileRefs {
		rep.Files = append(rep.Files, AuditFileRef{Path: path, Records: n})
	}
	sort.Slice(rep.Files, func(i, j int) bool { return rep.Files[i].Path < rep.Files[j].Path })
	sort.Slice(rep.Records, func(i, j int) bool {
		a, b := rep.Records[i], rep.Records[j]
		if a.File != b.File {
			return a.File < b.File
		}
		return a.RecordID < b.RecordID
	})
	rep.RecordsComplete = int64(len(rep.Records)) == all.RefRecords
	problems := all.ProblemN
	for _, root := range append(append([]string{}, spec.DEKTables...), spec.Datasets...) {
		if all.Roots[root] == 0 {
			problems++
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: no Parquet files: a wrong path would otherwise look like a clean audit", root))
		}
	}
	rep.Totals = AuditTotals{DEKTableFiles: all.DEKFiles, DEKs: all.DEKs, DEKsReferencing: int64(len(rep.DEKs)),
		RecordFiles: all.DataFiles, Records: all.Records, RecordsReferencing: all.RefRecords, FilesReferencing: int64(len(rep.Files)),
		RecordsUnresolved: all.Unresolved, Problems: problems}
	switch {
	case len(rep.DEKs) > 0 || all.RefRecords > 0:
		rep.Verdict = AuditReferenced
		rep.Reason = fmt.Sprintf("%d DEKs are wrapped by %s and %d records in %d files use them: the KEK is still needed", len(rep.DEKs), rep.KEK, all.RefRecords, len(rep.Files))
	case problems > 0 || all.Unresolved > 0:
		rep.Verdict = AuditInconclusive
		rep.Reason = fmt.Sprintf("nothing read references %s, but %d problems (unreadable files, unparseable rows, empty locations) and %d records whose dek_id is in none of the DEK tables leave it unproven", rep.KEK, problems, all.Unresolved)
	default:
		rep.Verdict = AuditClear
		rep.Reason = fmt.Sprintf("no DEK in the %d DEK table files and no record in the %d record files depends on %s", all.DEKFiles, all.DataFiles, rep.KEK)
	}
	return rep
}

// Audit is the audit composite: every DEK table and dataset listed (paths
// only are shuffled), DEK rows and record counts joined by dek_id, merged
// into one report written to spec.Report.
func Audit(s beam.Scope, spec AuditSpec) {
	s = s.Scope("Audit")
	var dekKVs, recKVs, parts []beam.PCollection
	for i, root := range spec.DEKTables {
		ts := s.Scope(fmt.Sprintf("DEKTable%d", i))
		files := ListFiles(ts, root)
		kv, part := beam.ParDo2(ts, &AuditDEKsFn{Spec: spec, Root: root}, files)
		dekKVs, parts = append(dekKVs, kv), append(parts, part)
	}
	deks := beam.Flatten(s, dekKVs...)
	matched := beam.ParDo(s, matchedDEKID, deks)
	for i, root := range spec.Datasets {
		ds := s.Scope(fmt.Sprintf("Dataset%d", i))
		files := ListFiles(ds, root)
		kv, part := beam.ParDo2(ds, &AuditRecordsFn{Spec: spec, Root: root}, files, beam.SideInput{Input: matched})
		recKVs, parts = append(recKVs, kv), append(parts, part)
	}
	if len(recKVs) == 0 {
		// No dataset: the join still needs a (empty) record side.
		none := beam.CreateList(s, []string{})
		kv, part := beam.ParDo2(s, &AuditRecordsFn{Spec: spec}, none, beam.SideInput{Input: matched})
		recKVs, parts = append(recKVs, kv), append(parts, part)
	}
	recs := beam.Flatten(s, recKVs...)
	joined := beam.ParDo(s, &AuditJoinFn{Spec: spec}, beam.CoGroupByKey(s, deks, recs))
	parts = append(parts, joined)
	merged := beam.Combine(s, &AuditMergeFn{MaxRecordIDs: spec.MaxRecordIDs}, beam.Flatten(s, parts...))
	beam.ParDo0(s, &WriteAuditReportFn{Spec: spec}, beam.Impulse(s), beam.SideInput{Input: merged})
}
