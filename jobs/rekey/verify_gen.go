package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners"

	"rekey/pipeline"
	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/transforms"
)

func cmdVerify(args []string, stdout, stderr io.Writer) error {
	var f jobFlags
	f.register(false)
	var data, deks, kek, wrap, report string
	defString(&data, "data", "", "record dataset to check (default: the job's target.data; for rewrap, source.data)")
	defString(&deks, "deks", "", "DEK table to check it with (default: the job's target.deks)")
	defString(&kek, "kek", "", "KEK that wraps that table (default: the job's target.kek)")
	defString(&wrap, "wrap", "", "wrap mechanism (default: as each DEK row says)")
	defString(&report, "report", "", "where to write the JSON report (default: <ledger>/run_id=<id>/_verify.json, or ./rekey-verify.json without a ledger)")
	set, err := parseFlags("verify", "Checks that every DEK of a DEK table unwraps with the target KEK and every encrypted\ncell of a dataset decrypts with it (AAD included), then compares the counts with the\nledger of the run (--ledger and --run-id, or the job file). Writes nothing but its report.\nExit 0 all good, 3 on any failure or mismatch.", args, stdout)
	if err != nil {
		return err
	}
	f.set = set
	quietBeam(f.verbose)
	j, err := f.load()
	if err != nil {
		return err
	}
	spec := j.Spec()
	spec.TargetData, spec.TargetDEKs, spec.TargetKEK, spec.TargetWrap = j.Target.Data, j.Target.DEKs, j.Target.KEK, j.Target.Wrap
	if j.Mode == schemas.ModeRewrap && spec.TargetData == "" {
		spec.TargetData = j.Source.Data
	}
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
	if spec.TargetDEKs == "" || spec.TargetKEK == "" {
		return withCode(exitUsage, errors.New("need a DEK table and its KEK: --job with target.deks/target.kek, or --deks and --kek"))
	}
	compare := j.Ledger != "" && f.runIDGiven
	spec.VerifyReport = report
	if spec.VerifyReport == "" {
		if j.Ledger != "" {
			spec.VerifyReport = storage.Join(transforms.RunLedgerDir(j.Ledger, j.RunID), "_verify.json")
		} else {
			spec.VerifyReport = "rekey-verify.json"
		}
	}
	ctx, cancel := signalContext()
	defer cancel()
	if _, err := transforms.OpenKEK(ctx, spec.TargetKEK, spec.TargetWrap, 2); err != nil {
		return withCode(exitPreflight, fmt.Errorf("KEK: %v", err))
	}
	p, s := beam.NewPipelineWithRoot()
	pipeline.BuildVerify(s, spec)
	stop := startProgress(stderr, f.progress, "verify")
	start := time.Now()
	_, runErr := beam.Run(ctx, *runners.Runner, p)
	stop()
	if runErr != nil {
		return withCode(exitFatal, fmt.Errorf("verify stopped: %v", cleanBeamErr(runErr)))
	}
	rep, err := readJSON[transforms.VerifyReport](ctx, spec.VerifyReport)
	if err != nil {
		return withCode(exitFatal, err)
	}
	t := rep.Totals
	fmt.Fprintf(stdout, "rekey verify: %s with %s (%s)\n", orNone(spec.TargetData), spec.TargetDEKs, time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(stdout, "  DEKs:    %d unwrap, %d fail\n", t.DEKsMigrated, t.DEKsFailed)
	if spec.TargetData != "" {
		fmt.Fprintf(stdout, "  records: %d decrypt, %d fail, in %d files (%d unreadable)\n", t.RecordsMigrated, t.RecordsFailed, countRecordFiles(rep), t.FilesFailed)
	}
	var problems []string
	if t.Failed > 0 {
		problems = append(problems, fmt.Sprintf("%d DEKs, cells or files failed to verify; first: %s", t.Failed, firstFailure(rep.Failures)))
	}
	if compare {
		ps, err := compareWithLedger(ctx, j, spec, rep)
		if err != nil {
			return withCode(exitFatal, err)
		}
		if len(ps) == 0 {
			fmt.Fprintf(stdout, "  ledger:  counts match run %s\n", j.RunID)
		}
		problems = append(problems, ps...)
	} else {
		fmt.Fprintf(stdout, "  ledger:  not compared (give --ledger and --run-id, or a job file with run_id)\n")
	}
	fmt.Fprintf(stdout, "  report:  %s\n", spec.VerifyReport)
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintf(stdout, "  MISMATCH %s\n", p)
		}
		return withCode(exitFailures, fmt.Errorf("verification failed (%d problems)", len(problems)))
	}
	fmt.Fprintln(stdout, "  OK")
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "(no records)"
	}
	return s
}

func countRecordFiles(r *transforms.VerifyReport) int {
	n := 0
	for _, f := range r.Files {
		if f.DEKs == 0 {
			n++
		}
	}
	return n
}

// compareWithLedger checks the verified counts against the run's manifest
// and, per file, against its ledger rows.
func compareWithLedger(ctx context.Context, j *pipeline.Job, spec transforms.Spec, rep *transforms.VerifyReport) ([]string, error) {
	m, err := readManifest(ctx, j.Ledger, j.RunID)
	if err != nil {
		return nil, err
	}
	var out []string
	t := rep.Totals
	rows, err := transforms.ReadLedger(ctx, j.Ledger, j.RunID)
	if err != nil {
		return nil, err
	}
	// An incremental run skipped the files whose target an earlier run
	// made: they are checked by decrypting, not against this run's ledger.
	skipped := map[string]bool{}
	want := map[string]int64{}
	for _, r := range rows {
		switch {
		case r.Unit == schemas.UnitFile && r.Status == schemas.StatusSkipped:
			skipped[r.Target] = true
		case r.Unit == schemas.UnitRecord && r.Status == schemas.StatusMigrated:
			want[r.Target]++
		}
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
		if f.DEKs == 0 && !skipped[f.Path] {
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
	return out, nil
}

func readJSON[T any](ctx context.Context, path string) (*T, error) {
	f, err := storage.Open(ctx, path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, 0, f.Size()))
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
	stop := startProgress(stderr, -1, "gen")
	_, err := beam.Run(ctx, *runners.Runner, p)
	stop()
	if err != nil {
		return withCode(exitFatal, fmt.Errorf("gen: %v", cleanBeamErr(err)))
	}
	fmt.Fprintf(stdout, "rekey gen: %d DEKs in %s, %d files x %d records (%d-byte payloads, encrypted: %v) in %s (%s)\n",
		g.NumDEKs, g.DEKs, g.Files, g.Records, g.RecordSize, g.Encrypted, orNone(g.Data), time.Since(start).Round(time.Millisecond))
	return nil
}
