package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners"

	"rekey/hsmio"
	"rekey/pipeline"
	"rekey/schemas"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

func init() {
	commands["audit"] = cmdAudit
}

const auditSynopsis = `Reports every DEK and every record that still depends on a KEK, from data alone:
the kek column of the DEK tables and the dek_id column of the datasets, joined by
dek_id. It opens no key and needs no PIN. Use it before destroying a retired KEK:
give every DEK table and dataset that is still in use.

  rekey audit --kek 'pkcs11:token=old-hsm;object=kek-2019' --deks /data/deks --data /data/records
  rekey audit --job JOB.yaml      (the job's source.kek, against its target tables and data)

Writes a JSON report (--report). Exit 0: nothing read references the KEK and
everything was read; 3: something still references it, or the audit is
inconclusive (an unreadable file, an empty location, records whose dek_id is in
none of the DEK tables); 1: the audit itself failed; 2: usage.`

func cmdAudit(args []string, stdout, stderr io.Writer) error {
	var job, kek, deks, data, report, dekCol, idCol string
	var maxIDs int
	var verbose bool
	defString(&job, "job", "", "job file: audit its source.kek against its target.deks and target.data (rewrap: source.data)")
	defString(&kek, "kek", "", "KEK to look for: a key reference such as pkcs11:token=<label>;object=<key> (no PIN needed)")
	defString(&deks, "deks", "", "comma-separated DEK table folders still in use")
	defString(&data, "data", "", "comma-separated record dataset folders still in use")
	defString(&report, "report", "", "where to write the JSON report (default: <ledger>/run_id=<id>/_audit.json with --job, else ./rekey-audit.json)")
	defString(&dekCol, "dek-column", "", "column naming each record's DEK (default dek_id)")
	defString(&idCol, "id-column", "", "record id column (default id)")
	defInt(&maxIDs, "max-record-ids", transforms.DefaultAuditRecordIDs, "referencing record ids listed in the report (counts are always complete; -1: all)")
	defBool(&verbose, "verbose", false, "show Beam's own log lines")
	var progress time.Duration
	ours["progress"] = true
	flag.CommandLine.DurationVar(&progress, "progress", 0, "progress line interval (default 2s on a terminal, 10s otherwise; -1s: off)")
	set, err := parseFlags("audit", auditSynopsis, args, stdout)
	if err != nil {
		return err
	}
	quietBeam(verbose)

	if maxIDs == 0 || maxIDs < -1 {
		return withCode(exitUsage, errors.New("--max-record-ids: use a positive number, or -1 for all"))
	}
	spec := transforms.AuditSpec{DEKColumn: "dek_id", IDColumn: "id", MaxRecordIDs: maxIDs}
	if job != "" {
		j, runIDGiven, err := loadJobFile(job)
		if err != nil {
			return err
		}
		spec.KEK = j.Source.KEK
		spec.DEKTables = []string{j.Target.DEKs}
		switch {
		case j.Target.Data != "":
			spec.Datasets = []string{j.Target.Data}
		case j.Mode == schemas.ModeRewrap && j.Source.Data != "":
			spec.Datasets = []string{j.Source.Data}
		}
		spec.DEKColumn, spec.IDColumn = j.Columns.DEKID, j.Columns.RecordID
		if j.Ledger != "" && runIDGiven {
			spec.Report = ledger.RunDir(j.Ledger, j.RunID) + "/_audit.json"
		}
	}
	if set["kek"] {
		spec.KEK = kek
	}
	if set["deks"] {
		spec.DEKTables = splitList(deks)
	}
	if set["data"] {
		spec.Datasets = splitList(data)
	}
	if set["dek-column"] {
		spec.DEKColumn = dekCol
	}
	if set["id-column"] {
		spec.IDColumn = idCol
	}
	if set["report"] {
		spec.Report = report
	}
	if spec.Report == "" {
		spec.Report = "rekey-audit.json"
	}
	if spec.KEK == "" {
		return withCode(exitUsage, errors.New("--kek is required (or --job, whose source.kek is audited)"))
	}
	if strings.HasPrefix(spec.KEK, "pkcs11:") {
		u, err := hsmio.ParseURI(spec.KEK)
		if err != nil {
			return withCode(exitUsage, fmt.Errorf("--kek: %v", err))
		}
		spec.KEK = u.KeyURI() // the audit opens no key: module and PIN source are not needed
	}
	if err := spec.Validate(); err != nil {
		return withCode(exitUsage, err)
	}

	ctx, cancel := signalContext()
	defer cancel()
	fmt.Fprintf(stderr, "rekey audit: looking for %s in %d DEK tables and %d datasets, runner %s\n", spec.KEK, len(spec.DEKTables), len(spec.Datasets), *runners.Runner)
	p, s := beam.NewPipelineWithRoot()
	pipeline.BuildAudit(s, spec)
	start := time.Now()
	stop := startProgress(stderr, progress, "audit", noTotals)
	_, runErr := beam.Run(ctx, *runners.Runner, p)
	stop()
	if runErr != nil {
		return withCode(exitFatal, fmt.Errorf("audit stopped: %v", cleanBeamErr(runErr)))
	}
	rep, err := readJSON[transforms.AuditReport](ctx, spec.Report)
	if err != nil {
		return withCode(exitFatal, fmt.Errorf("audit report: %v (with a remote runner, --report must be on storage this machine can read)", err))
	}
	printAudit(stdout, rep, time.Since(start))
	switch rep.Verdict {
	case transforms.AuditClear:
		return nil
	case transforms.AuditReferenced:
		return withCode(exitFailures, fmt.Errorf("%s is still referenced: do not destroy it (see %s)", rep.KEK, spec.Report))
	default:
		return withCode(exitFailures, fmt.Errorf("inconclusive: %s (see %s)", rep.Reason, spec.Report))
	}
}

func loadJobFile(path string) (*pipeline.Job, bool, error) {
	f := jobFlags{job: path, set: map[string]bool{}}
	j, err := f.load()
	if err != nil {
		return nil, false, err
	}
	if j.Source.KEK == "" || j.Target.DEKs == "" {
		return nil, false, withCode(exitUsage, fmt.Errorf("%s: an audit from a job file needs source.kek and target.deks", path))
	}
	return j, f.runIDGiven, nil
}

func printAudit(w io.Writer, r *transforms.AuditReport, took time.Duration) {
	t := r.Totals
	fmt.Fprintf(w, "rekey audit: %s (%s)\n", r.KEK, took.Round(time.Millisecond))
	fmt.Fprintf(w, "  DEK tables: %d DEKs in %s; %d wrapped by this KEK\n", t.DEKs, plural(int64(t.DEKTableFiles), "file"), t.DEKsReferencing)
	fmt.Fprintf(w, "  datasets:   %d records in %s; %d records in %s use those DEKs\n", t.Records, plural(int64(t.RecordFiles), "file"), t.RecordsReferencing, plural(int64(t.FilesReferencing), "file"))
	if t.RecordsUnresolved > 0 {
		fmt.Fprintf(w, "  unresolved: %d records name a dek_id that is in none of the DEK tables\n", t.RecordsUnresolved)
	}
	for i, d := range r.DEKs {
		if i == 10 {
			fmt.Fprintf(w, "    ... %d more DEKs in the report\n", len(r.DEKs)-10)
			break
		}
		fmt.Fprintf(w, "    DEK %s (%s, %d records) in %s\n", d.DEKID, d.Wrap, d.Records, strings.Join(d.Tables, ", "))
	}
	for i, p := range r.Problems {
		if i == 5 {
			fmt.Fprintf(w, "    ... %d problems in all\n", t.Problems)
			break
		}
		fmt.Fprintf(w, "  problem: %s\n", p)
	}
	if len(r.DEKsByKEK) > 0 {
		fmt.Fprintf(w, "  KEKs referenced by the DEK tables:\n")
		refs := make([]string, 0, len(r.DEKsByKEK))
		for k := range r.DEKsByKEK {
			refs = append(refs, k)
		}
		sort.Strings(refs)
		for _, k := range refs {
			fmt.Fprintf(w, "    %s: %d DEKs\n", k, r.DEKsByKEK[k])
		}
	}
	fmt.Fprintf(w, "  verdict:    %s: %s\n", strings.ToUpper(r.Verdict), r.Reason)
}
