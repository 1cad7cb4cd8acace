package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners"

	"rekey/pipeline"
	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/schemas/format"
	"rekey/schemas/objfmt"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

const verifySynopsis = `Answers "is every source record now readable under the new key?": counts the source's
records and DEKs, matches them with the target, and checks that every target DEK unwraps
with the target KEK and every encrypted cell decrypts (AAD included). Writes nothing but
its report.

Source and target files are matched by relative name. rewrap: each source DEK table file
against the target file of that name, same dek_ids; the records are checked where they
are (source.data, or --data). reencrypt: each source record file against the target file
of that name, by record id; each source DEK X against its replacement X@<run id> in the
target DEK table (also under run_id=<id>/ of --incremental runs). Counts: migrated (at
the target and decrypts), failed (at the target, does not decrypt or unwrap), missing (in
the source, not at the target), extra (at the target, not in the source).

The source is the job's source.* (or --source-data/--source-deks); --mode, else the job's
mode, else reencrypt when the target data differs from the source data. Without a source
(or with --target-only) the target alone is checked, and what it lacks cannot be seen:
the output says so. With --ledger and --run-id the counts are also compared with the run's
ledger: a note when a source is compared, a check when not.

Exit codes: 0 every source record and DEK is at the target and decrypts, nothing extra
(target only: everything the target holds decrypts and the ledger agrees); 3 something
failed, is missing or extra, or a file cannot be read; 1 fatal (the check could not
finish); 2 usage; 4 the target KEK cannot be opened.`

func cmdVerify(args []string, stdout, stderr io.Writer) error {
	var f jobFlags
	f.register(true)
	var data, deks, kek, wrap, report string
	var targetOnly bool
	defString(&data, "data", "", "target record dataset to check (default: the job's target.data; for rewrap, source.data)")
	defString(&deks, "deks", "", "target DEK table to check it with (default: the job's target.deks)")
	defString(&kek, "kek", "", "KEK that wraps that table (default: the job's target.kek)")
	defString(&wrap, "wrap", "", "wrap mechanism (default: as each DEK row says)")
	defString(&report, "report", "", "where to write the JSON report (default: <ledger>/run_id=<id>/_verify.json, or ./rekey-verify.json without a ledger)")
	defBool(&targetOnly, "target-only", false, "check the target alone, without comparing it with the job's source (what the target lacks then goes unseen)")
	set, err := parseFlags("verify", verifySynopsis, args, stdout)
	if err != nil {
		return err
	}
	f.set = set
	quietBeam(f.verbose)
	j, err := f.load()
	if err != nil {
		return err
	}
	if report == "" {
		if j.Ledger != "" {
			report = ledger.ReportPath(j.Ledger, j.RunID, "_verify.json")
		} else {
			report = "rekey-verify.json"
		}
	}
	spec := j.VerifySpec(report)
	if set["data"] {
		spec.TargetData = data
	}
	if set["deks"] {
		spec.TargetDEKs = deks
	}
	if set["kek"] {
		spec.TargetKEK = kek
	}
	if set["wrap"] {
		spec.TargetWrap = wrap
	}
	cellKeys := false
	if tf, err := format.New(spec.TargetFormat, spec.TargetFormatOptions); err == nil && tf.Keys() != format.KeyTable {
		// No DEK table: the wrapped DEKs are in the cells or in a key
		// column, each unwrapped by the target KEK.
		cellKeys = true
	}
	if objfmt.Known(spec.TargetFormat) {
		if spec.TargetData == "" && j.Mode == schemas.ModeRewrap {
			spec.TargetData = j.Source.Data // objects are rewrapped where they are
		}
	} else if !cellKeys && (spec.TargetDEKs == "" || spec.TargetKEK == "") {
		return withCode(exitUsage, errors.New("need a DEK table and its KEK: --job with target.deks/target.kek, or --deks and --kek"))
	}
	if err := verifySource(j, &spec, targetOnly); err != nil {
		return withCode(exitUsage, err)
	}
	if err := spec.Validate(); err != nil {
		return withCode(exitUsage, err)
	}
	ctx, cancel := signalContext()
	defer cancel()
	if _, err := transforms.OpenKEK(ctx, spec.TargetKEK, spec.TargetWrap, 2); err != nil {
		return withCode(exitPreflight, fmt.Errorf("KEK: %v", err))
	}
	p, s := beam.NewPipelineWithRoot()
	pipeline.BuildVerify(s, spec)
	stop := startProgress(stderr, f.progress, "verify", noTotals)
	start := time.Now()
	_, runErr := beam.Run(ctx, *runners.Runner, p)
	stop()
	if runErr != nil {
		return withCode(exitFatal, fmt.Errorf("verify stopped: %s", verifyStopped(runErr)))
	}
	rep, err := readJSON[transforms.VerifyReport](ctx, spec.Report)
	if err != nil {
		return withCode(exitFatal, err)
	}
	printVerify(stdout, rep, time.Since(start))
	if j.Ledger != "" && f.runIDGiven {
		if err := verifyLedger(ctx, stdout, j, spec, rep); err != nil {
			return withCode(exitFatal, err)
		}
		if err := writeJSON(ctx, spec.Report, rep); err != nil {
			return withCode(exitFatal, fmt.Errorf("write the report %s: %v", spec.Report, err))
		}
	} else if !rep.Compared {
		fmt.Fprintf(stdout, "  ledger:  not compared (give --ledger and --run-id, or a job file with run_id)\n")
	}
	fmt.Fprintf(stdout, "  report:  %s\n", spec.Report)
	if !rep.OK {
		why := verifyProblems(rep)
		fmt.Fprintf(stdout, "  MISMATCH: %s\n", why)
		for i, n := range rep.Failures {
			if i == 5 {
				fmt.Fprintf(stdout, "    (more in the report)\n")
				break
			}
			fmt.Fprintf(stdout, "    %s\n", firstFailure([]schemas.FailureNote{n}))
		}
		return withCode(exitFailures, fmt.Errorf("verification failed: %s", why))
	}
	c := rep.Counts
	switch {
	case objfmt.Known(spec.TargetFormat):
		fmt.Fprintf(stdout, "  OK: %d objects under %s decrypt with the target KEK (keys unwrap, bodies authenticate where the format allows); %d skipped (not encrypted)\n",
			rep.Totals.ObjectsMigrated, spec.TargetData, rep.Totals.ObjectsSkipped)
	case rep.Compared && rep.Data == "":
		fmt.Fprintf(stdout, "  OK: %d of %d source DEKs are at the target and unwrap; nothing extra (records not checked: no data given, see source.data or --data)\n",
			c.DEKs.Migrated, c.DEKs.Source)
	case rep.Compared:
		fmt.Fprintf(stdout, "  OK: %d of %d source records and %d of %d source DEKs are at the target and decrypt; nothing extra\n",
			c.Records.Migrated, c.Records.Source, c.DEKs.Migrated, c.DEKs.Source)
	default:
		fmt.Fprintf(stdout, "  OK (target only, not compared with a source): %d records and %d DEKs, all decrypt\n", c.Records.Migrated, c.DEKs.Migrated)
	}
	return nil
}

// verifySource sets what the target is compared with: the job's source,
// mapped by its mode, unless there is none or --target-only.
func verifySource(j *pipeline.Job, spec *transforms.VerifySpec, targetOnly bool) error {
	spec.Match = ""
	if targetOnly || j.Source.DEKs == "" {
		if spec.TargetData == "" && j.Source.Data != "" && (j.Mode == schemas.ModeRewrap || j.Mode == "") {
			spec.TargetData = j.Source.Data // rewrap: the data stays where it is
		}
		// Records that carry their wrapped keys (in a key column, or in
		// their cells) have no source DEK table: their ids are compared
		// with the source records' when the run wrote them elsewhere.
		if tf, err := format.New(spec.TargetFormat, spec.TargetFormatOptions); !targetOnly && err == nil && tf.Keys() != format.KeyTable &&
			!objfmt.Known(spec.TargetFormat) && j.Source.Data != "" && spec.TargetData != "" && spec.TargetData != j.Source.Data && j.Mode != "" {
			spec.SourceData, spec.Match = j.Source.Data, j.Mode
		}
		return nil
	}
	mode := j.Mode
	if mode == "" {
		mode = schemas.ModeRewrap
		if spec.TargetData != "" && spec.TargetData != j.Source.Data {
			mode = schemas.ModeReencrypt
		}
	}
	spec.Match, spec.SourceDEKs = mode, j.Source.DEKs
	switch mode {
	case schemas.ModeRewrap:
		if spec.TargetData == "" {
			spec.TargetData = j.Source.Data
		}
		spec.SourceData = j.Source.Data
		if spec.SourceData == "" {
			spec.SourceData = spec.TargetData // --data alone: the records, checked where they are
		}
	case schemas.ModeReencrypt:
		if j.Source.Data == "" || spec.TargetData == "" {
			return errors.New("reencrypt: comparing with the source needs source.data (--source-data) and target.data (--data or --target-data); or --target-only to check the target alone")
		}
		spec.SourceData = j.Source.Data
	default:
		return fmt.Errorf("mode %q is not a mode (rewrap or reencrypt)", mode)
	}
	return nil
}

// printVerify prints what was compared with what and the counts.
func printVerify(w io.Writer, rep *transforms.VerifyReport, took time.Duration) {
	c := rep.Counts
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	if rep.Compared {
		fmt.Fprintf(w, "rekey verify: compared source %s / %s (%d records, %d DEKs) with target %s / %s under %s (%s)\n",
			orNone(rep.Source.Data), rep.Source.DEKs, c.Records.Source, c.DEKs.Source, orNone(rep.Data), rep.DEKs, rep.KEK, took.Round(time.Millisecond))
		if rep.Source.DEKs == "" {
			fmt.Fprintf(w, "  matched: %s: each source record file with the target file of that name, by record id;\n"+
				"           each record's wrapped keys (in its cells or its key column) unwrapped by the target KEK\n", rep.Mode)
		} else if rep.Mode == schemas.ModeReencrypt {
			fmt.Fprintf(w, "  matched: reencrypt: each source record file with the target file of that name, by record id;\n"+
				"           each source DEK X with its replacement X@<run id> in the target DEK table\n")
		} else {
			fmt.Fprintf(w, "  matched: rewrap: each source DEK table file with the target file of that name, same dek_ids;\n"+
				"           the records checked where they are, against the target DEK table\n")
		}
		fmt.Fprintln(tw, "\tsource\ttarget\tmigrated\tfailed\tmissing\textra\t")
		for _, r := range []struct {
			name string
			c    transforms.VerifyCounts
		}{{"records", c.Records}, {"DEKs", c.DEKs}, {"files", c.Files}} {
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%d\t%d\t%d\t\n", r.name, r.c.Source, r.c.Target, r.c.Migrated, r.c.Failed, r.c.Missing, r.c.Extra)
		}
	} else {
		fmt.Fprintf(w, "rekey verify: checked target %s / %s under %s ALONE (%s)\n", orNone(rep.Data), rep.DEKs, rep.KEK, took.Round(time.Millisecond))
		fmt.Fprintf(w, "  NOT COMPARED WITH A SOURCE: this shows that what the target holds decrypts, not that it holds\n"+
			"  everything: records, DEKs or files missing from it cannot be seen. Give a job with source.*\n"+
			"  (or --source-data and --source-deks) to compare.\n")
		fmt.Fprintln(tw, "\tat target\tdecrypt\tfail\t")
		fmt.Fprintf(tw, "  records\t%d\t%d\t%d\t\n", c.Records.Target, c.Records.Migrated, c.Records.Failed)
		fmt.Fprintf(tw, "  DEKs\t%d\t%d\t%d\t\n", c.DEKs.Target, c.DEKs.Migrated, c.DEKs.Failed)
		fmt.Fprintf(tw, "  files\t%d\t%d\t%d\t\n", c.Files.Target, c.Files.Migrated, c.Files.Failed)
	}
	tw.Flush()
	t := rep.Totals
	fmt.Fprintf(w, "  target:  %d DEK rows: %d unwrap, %d fail", t.DEKs, t.DEKsMigrated, t.DEKsFailed)
	if rep.Data != "" {
		fmt.Fprintf(w, "; %d records: %d decrypt, %d fail", t.Records, t.RecordsMigrated, t.RecordsFailed)
	}
	fmt.Fprintf(w, "; %s unreadable\n", plural(t.FilesFailed, "file"))
}

// verifyProblems says in one line why a verify is not OK.
func verifyProblems(rep *transforms.VerifyReport) string {
	c := rep.Counts
	var out []string
	side := func(name string, v transforms.VerifyCounts) {
		if v.Problems() == 0 {
			return
		}
		if rep.Compared {
			out = append(out, fmt.Sprintf("%d of %d source %s not readable at the target (%d missing, %d failed), %d extra",
				v.Missing+v.Failed, v.Source, name, v.Missing, v.Failed, v.Extra))
		} else {
			out = append(out, fmt.Sprintf("%d of %d %s at the target fail", v.Failed, v.Target, name))
		}
	}
	side("records", c.Records)
	side("DEKs", c.DEKs)
	if n := c.Files.Failed; n > 0 {
		out = append(out, fmt.Sprintf("%s cannot be read", plural(n, "file")))
	}
	if c.Files.Missing+c.Files.Extra > 0 {
		out = append(out, fmt.Sprintf("%s missing and %d extra at the target", plural(c.Files.Missing, "file"), c.Files.Extra))
	}
	if l := rep.Ledger; l != nil && l.Decides && len(l.Problems) > 0 {
		out = append(out, fmt.Sprintf("%s with the ledger of run %s", plural(int64(len(l.Problems)), "difference"), l.RunID))
	}
	if len(out) == 0 {
		return "see the report"
	}
	return strings.Join(out, "; ")
}

// verifyLedger compares the counts with the run's ledger: a note when a
// source was compared (the source decides), a check when not.
func verifyLedger(ctx context.Context, w io.Writer, j *pipeline.Job, spec transforms.VerifySpec, rep *transforms.VerifyReport) error {
	ps, err := compareWithLedger(ctx, j, spec, rep)
	if err != nil {
		if !rep.Compared {
			return err
		}
		fmt.Fprintf(w, "  ledger:  not compared with run %s (%v); the source comparison above decides\n", j.RunID, err)
		return nil
	}
	rep.Ledger = &transforms.VerifyLedger{RunID: j.RunID, Decides: !rep.Compared, Problems: ps}
	if rep.Ledger.Problems == nil {
		rep.Ledger.Problems = []string{}
	}
	switch {
	case len(ps) == 0 && rep.Compared:
		fmt.Fprintf(w, "  ledger:  counts match run %s (a note: the source comparison decides)\n", j.RunID)
	case len(ps) == 0:
		fmt.Fprintf(w, "  ledger:  counts match run %s\n", j.RunID)
	case rep.Compared:
		for _, p := range ps {
			fmt.Fprintf(w, "  ledger:  note: %s (the source comparison decides)\n", p)
		}
	default:
		for _, p := range ps {
			fmt.Fprintf(w, "  ledger:  MISMATCH %s\n", p)
		}
		rep.OK = false
	}
	return nil
}

// verifyStopped says why the verify pipeline stopped: the line of Beam's
// error that names the cause, not the "DoFn[...] failed:" line above it.
func verifyStopped(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "rekey verify: "); i >= 0 {
		line := msg[i+len("rekey verify: "):]
		if k := strings.IndexByte(line, '\n'); k >= 0 {
			line = line[:k]
		}
		return strings.TrimSpace(line)
	}
	clean := strings.TrimSpace(cleanBeamErr(err))
	if clean != "" && !strings.HasSuffix(clean, ":") {
		return clean
	}
	lines := strings.Split(msg, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" && !strings.HasSuffix(l, ":") {
			return l
		}
	}
	return "the pipeline failed without saying why (run again with --verbose)"
}

func orNone(s string) string {
	if s == "" {
		return "(no records)"
	}
	return s
}

// compareWithLedger checks the verified counts against the run's manifest
// and, per file, against its ledger rows.
func compareWithLedger(ctx context.Context, j *pipeline.Job, spec transforms.VerifySpec, rep *transforms.VerifyReport) ([]string, error) {
	m, err := readManifest(ctx, j.Ledger, j.RunID)
	if err != nil {
		return nil, err
	}
	var out []string
	t := rep.Totals
	if objfmt.Known(spec.TargetFormat) {
		// Every object the run migrated must be among those that decrypt
		// (failures already fail the verdict): counted, not listed.
		if t.ObjectsMigrated < m.Totals.ObjectsMigrated {
			out = append(out, fmt.Sprintf("%d objects decrypt under %s; run %s migrated %d", t.ObjectsMigrated, spec.TargetData, j.RunID, m.Totals.ObjectsMigrated))
		}
		return out, nil
	}
	// The ledger is streamed and aggregated per target file: memory grows
	// with the number of files, not of records.
	// An incremental run skipped the files whose target an earlier run
	// made: they are checked by decrypting, not against this run's ledger.
	skipped := map[string]bool{}
	want := map[string]int64{}
	err = ledger.Scan(ctx, j.Ledger, j.RunID, false, func(rows []schemas.LedgerRow) error {
		for i := range rows {
			r := &rows[i]
			switch {
			case r.Unit == schemas.UnitFile && r.Status == schemas.StatusSkipped:
				skipped[r.Target] = true
			case r.Unit == schemas.UnitRecord && r.Status == schemas.StatusMigrated:
				want[r.Target]++
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(skipped) == 0 && t.DEKsMigrated != m.Totals.DEKsMigrated || len(skipped) > 0 && t.DEKsMigrated < m.Totals.DEKsMigrated {
		out = append(out, fmt.Sprintf("DEK table has %d DEKs that unwrap; run %s migrated %d", t.DEKsMigrated, j.RunID, m.Totals.DEKsMigrated))
	}
	if m.Mode != schemas.ModeReencrypt || spec.TargetData == "" {
		return out, nil
	}
	got := map[string]int64{}
	var verified int64
	for _, f := range rep.Files {
		if f.Kind == transforms.VerifyKindRecords && !skipped[f.Path] {
			got[f.Path] = f.Verified
			verified += f.Verified
		}
	}
	if verified != m.Totals.RecordsMigrated {
		out = append(out, fmt.Sprintf("%d records decrypt in the files run %s wrote; it migrated %d", verified, j.RunID, m.Totals.RecordsMigrated))
	}
	for path, n := range want {
		if got[path] != n {
			out = append(out, fmt.Sprintf("%s: ledger says %d records migrated, %d verified", path, n, got[path]))
		}
	}
	for path, n := range got {
		if _, ok := want[path]; !ok && n > 0 {
			out = append(out, fmt.Sprintf("%s: %d records verified but the ledger of run %s has none for this file", path, n, j.RunID))
		}
	}
	sort.Strings(out)
	return out, nil
}

// writeJSON replaces the object at path with v, indented.
func writeJSON(ctx context.Context, path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return storage.Put(ctx, path, append(b, '\n'))
}

func readJSON[T any](ctx context.Context, path string) (*T, error) {
	b, err := storage.ReadAll(ctx, path, 64<<20)
	if err != nil {
		return nil, err
	}
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return &v, nil
}

func cmdGen(args []string, stdout, stderr io.Writer) error {
	var g transforms.GenSpec
	var encrypted string
	var verbose bool
	var seed int
	defString(&g.Data, "data", "", "output record dataset folder (required unless --files 0)")
	defString(&g.DEKs, "deks", "", "output DEK table folder (required)")
	defString(&g.KEK, "kek", "", "KEK that wraps the generated DEKs: pkcs11:...?pin-source=env:VAR (required)")
	defString(&g.Wrap, "wrap", "", "wrap mechanism (default aes-gcm for AES keys, rsa-oaep-sha256 for RSA)")
	defInt(&g.Files, "files", 4, "record files")
	defInt(&g.Records, "records", 1000, "records per file")
	defInt(&g.NumDEKs, "num-deks", 16, "DEKs (records cycle over them)")
	defInt(&g.RecordSize, "record-size", 256, "plaintext bytes of each payload cell")
	defInt(&seed, "seed", 1, "seed of the plaintext (the same seed gives the same plaintext)")
	defString(&encrypted, "encrypted", "payload", "encrypted columns: payload, note (nullable), or both")
	defString(&g.Marker, "marker", "", "string written at the start of every plaintext (canary tests)")
	defInt(&g.RowGroup, "row-group", 10000, "rows per row group")
	defInt(&g.Workers, "workers", 0, "goroutines (default: number of CPUs)")
	defInt(&g.DEKSPerFile, "deks-per-file", 100000, "DEKs per DEK table file")
	defBool(&verbose, "verbose", false, "show Beam's own log lines")
	if _, err := parseFlags("gen", "Makes a synthetic encrypted dataset: a DEK table of fresh random DEKs wrapped by --kek,\nand record files (id, dek_id, tenant, amount, payload, note, created) whose encrypted\ncells follow docs/FORMAT.md. The plaintext is a deterministic function of --seed.", args, stdout); err != nil {
		return err
	}
	quietBeam(verbose)
	g.Seed = uint64(seed)
	g.Encrypted = splitList(encrypted)
	if g.Workers <= 0 {
		g.Workers = 0
	}
	switch {
	case g.DEKs == "" || g.KEK == "":
		return withCode(exitUsage, errors.New("--deks and --kek are required"))
	case g.Files > 0 && g.Data == "":
		return withCode(exitUsage, errors.New("--data is required (or --files 0 for a DEK table only)"))
	case g.NumDEKs <= 0 || g.Files < 0 || g.Records < 0 || g.RecordSize < 0:
		return withCode(exitUsage, errors.New("--num-deks must be positive; --files, --records, --record-size not negative"))
	}
	for _, c := range g.Encrypted {
		if c != "payload" && c != "note" {
			return withCode(exitUsage, fmt.Errorf("--encrypted: %q is not a generated column (payload, note)", c))
		}
	}
	if g.Workers == 0 {
		g.Workers = defaultWorkers()
	}
	ctx, cancel := signalContext()
	defer cancel()
	if _, err := transforms.OpenKEK(ctx, g.KEK, g.Wrap, 2); err != nil {
		return withCode(exitPreflight, fmt.Errorf("KEK: %v", err))
	}
	p, s := beam.NewPipelineWithRoot()
	pipeline.BuildGen(s, g)
	start := time.Now()
	stop := startProgress(stderr, -1, "gen", noTotals)
	_, err := beam.Run(ctx, *runners.Runner, p)
	stop()
	if err != nil {
		return withCode(exitFatal, fmt.Errorf("gen: %v", cleanBeamErr(err)))
	}
	fmt.Fprintf(stdout, "rekey gen: %d DEKs in %s, %d files x %d records (%d-byte payloads, encrypted: %v) in %s (%s)\n",
		g.NumDEKs, g.DEKs, g.Files, g.Records, g.RecordSize, g.Encrypted, orNone(g.Data), time.Since(start).Round(time.Millisecond))
	return nil
}
