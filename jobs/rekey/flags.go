package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners"

	"rekey/pipeline"
)

// jobFlags are the flags that build or override a job file.
type jobFlags struct {
	job, mode, runID                          string
	srcData, srcDEKs, srcKEK, srcWrap         string
	dstData, dstDEKs, dstKEK, dstWrap         string
	ledger, encrypted, dekCol, idCol, dekSrc  string
	workers, cacheSize, maxCell               int
	resume, verbose, runIDGiven, verifyCommit bool
	incremental, successMarker                bool
	progress, leaseTTL                        time.Duration
	hsmRate, srcRate, dstRate                 float64
	maxFail                                   string
	set                                       map[string]bool
}

// ours lists the flags rekey defines, so --help shows them and not Beam's;
// hidden are those of ours a command accepts but does not list.
var ours, hidden = map[string]bool{}, map[string]bool{}

// beamCommands run a Beam pipeline: they take --runner and Beam's flags.
var beamCommands = map[string]bool{"run": true, "plan": true, "verify": true, "gen": true, "audit": true}

// showDefault says whether --help adds "(default X)" to a flag's usage: when
// the default is not the zero value and the usage does not already say it.
func showDefault(f *flag.Flag) bool {
	switch f.DefValue {
	case "", "0", "false", "0s":
		return false
	}
	return !strings.Contains(f.Usage, "default")
}

func defString(p *string, name, value, usage string) {
	ours[name] = true
	flag.CommandLine.StringVar(p, name, value, usage)
}

func defInt(p *int, name string, value int, usage string) {
	ours[name] = true
	flag.CommandLine.IntVar(p, name, value, usage)
}

func defBool(p *bool, name string, value bool, usage string) {
	ours[name] = true
	flag.CommandLine.BoolVar(p, name, value, usage)
}

// register defines the job flags. verify (forVerify) accepts them all, so
// that a run's command line can be verified as it is, but its --help
// lists only those that say what to check and how, not the ones that
// steer a run (resume, failure budget, marker, lease, ...).
func (f *jobFlags) register(forVerify bool) {
	hide := func(names ...string) {
		if forVerify {
			for _, n := range names {
				hidden[n] = true
			}
		}
	}
	hide("target-wrap", "dek-source", "max-failures", "verify-before-commit", "success-marker", "incremental", "resume", "lease-ttl")
	defString(&f.job, "job", "", "job file (YAML, see README \"Job file\"); flags below override it")
	defString(&f.mode, "mode", "", "rewrap (DEKs only, data untouched) or reencrypt (every record)")
	defString(&f.runID, "run-id", "", "run id: names the ledger folder run_id=<id> (default: UTC timestamp)")
	defString(&f.srcData, "source-data", "", "source record dataset folder")
	defString(&f.srcDEKs, "source-deks", "", "source DEK table folder")
	defString(&f.srcKEK, "source-kek", "", "source KEK: pkcs11:token=<label>;object=<key>?pin-source=env:VAR")
	defString(&f.srcWrap, "source-wrap", "", "wrap mechanism to expect on the source (rows name their own)")
	defString(&f.dstData, "target-data", "", "target record dataset folder (reencrypt)")
	defString(&f.dstDEKs, "target-deks", "", "target DEK table folder")
	defString(&f.dstKEK, "target-kek", "", "target KEK URI")
	defString(&f.dstWrap, "target-wrap", "", "target wrap: aes-gcm, aes-kwp, rsa-oaep-sha256, rsa-oaep-sha1 (default aes-gcm for AES keys, rsa-oaep-sha256 for RSA)")
	defString(&f.ledger, "ledger", "", "ledger folder (Parquet, Hive-style run_id=<id>/)")
	defString(&f.encrypted, "encrypted", "", "comma-separated encrypted columns (default payload)")
	defString(&f.dekCol, "dek-column", "", "column naming each record's DEK (default dek_id)")
	defString(&f.idCol, "id-column", "", "record id column (default id)")
	defString(&f.dekSrc, "dek-source", "", "where fresh DEKs come from: hsm (target HSM RNG, default) or crypto-rand")
	defInt(&f.workers, "workers", 0, "goroutines per worker process for crypto and HSM calls, and record files a reencrypt works on at once (default: number of CPUs)")
	defInt(&f.cacheSize, "cache-size", 0, "unwrapped DEKs kept in memory per process (default 4096; evicted keys are zeroed)")
	defInt(&f.maxCell, "max-cell-bytes", 0, "largest cell accepted (default and limit 64 MiB)")
	ours["hsm-rate"] = true
	flag.CommandLine.Float64Var(&f.hsmRate, "hsm-rate", 0, "custodian operations per second per HSM or KMS, per worker process (0: the custodian's default: unlimited for PKCS#11, the vendor's published quota for a KMS); shared HSMs need this")
	ours["source-hsm-rate"], ours["target-hsm-rate"] = true, true
	flag.CommandLine.Float64Var(&f.srcRate, "source-hsm-rate", 0, "like --hsm-rate, for source.kek's custodian only (job file: source.hsm_rate); one custodian on both sides has one budget")
	flag.CommandLine.Float64Var(&f.dstRate, "target-hsm-rate", 0, "like --hsm-rate, for target.kek's custodian only (job file: target.hsm_rate)")
	defString(&f.maxFail, "max-failures", "", "stop the run past this many failures: a count (100), a percentage (0.1%), or 0 for the first")
	defBool(&f.verifyCommit, "verify-before-commit", true, "check every new wrapped DEK (target unwrap) and every new cell (decrypt again) before committing; false only to measure its cost")
	defBool(&f.successMarker, "success-marker", true, "write an empty _SUCCESS into the target folders when the run completes with nothing failed (downstream jobs wait for it); --success-marker=false to turn it off")
	defBool(&f.incremental, "incremental", false, "scheduled runs: skip source files whose target was made from the same content by an earlier run (new or changed files only)")
	defBool(&f.resume, "resume", false, "continue a run with the same --run-id: committed units are kept, the rest is done")
	defBool(&f.verbose, "verbose", false, "show Beam's own log lines")
	ours["lease-ttl"] = true
	flag.CommandLine.DurationVar(&f.leaseTTL, "lease-ttl", pipeline.DefaultLeaseTTL, "how long the run's lease on its run id and target outlives a run that stopped renewing it (killed on another host)")
	ours["progress"] = true
	flag.CommandLine.DurationVar(&f.progress, "progress", 0, "progress line interval (default 2s on a terminal, 10s otherwise; -1s: off)")
}

// parseFlags parses args into flag.CommandLine (rekey's and Beam's flags).
func parseFlags(cmd, synopsis string, args []string, stdout io.Writer) (map[string]bool, error) {
	if beamCommands[cmd] {
		ours["runner"] = true
	}
	flag.CommandLine.Init("rekey "+cmd, flag.ContinueOnError)
	flag.CommandLine.SetOutput(stdout)
	flag.CommandLine.Usage = func() {
		fmt.Fprintf(stdout, "Usage: rekey %s [flags]\n\n%s\n\nFlags:\n", cmd, synopsis)
		var names []string
		flag.CommandLine.VisitAll(func(f *flag.Flag) {
			if ours[f.Name] && !hidden[f.Name] {
				names = append(names, f.Name)
			}
		})
		sort.Strings(names)
		for _, n := range names {
			f := flag.CommandLine.Lookup(n)
			usage := f.Usage
			if n == "runner" {
				usage = "Beam runner: direct (default; in-process), prism (in-process portable runner), universal (--endpoint=HOST:PORT job service), dataflow, flink, spark"
			}
			if showDefault(f) {
				usage += fmt.Sprintf(" (default %s)", f.DefValue)
			}
			fmt.Fprintf(stdout, "  --%s\n    \t%s\n", n, usage)
		}
		if len(hidden) > 0 {
			var hs []string
			for n := range hidden {
				hs = append(hs, "--"+n)
			}
			sort.Strings(hs)
			fmt.Fprintf(stdout, "\nrekey run's flags that steer a run (%s) are accepted and ignored, so a run's command line can be checked as it is.\n", strings.Join(hs, ", "))
		}
		if beamCommands[cmd] {
			fmt.Fprintln(stdout, "\nBeam's runner flags (--endpoint, --environment_type, --job_name, --project, --region, ...) are accepted too.")
		}
	}
	if err := flag.CommandLine.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return nil, err
		}
		return nil, withCode(exitUsage, fmt.Errorf("%v (see rekey %s --help)", err, cmd))
	}
	if flag.CommandLine.NArg() > 0 {
		return nil, withCode(exitUsage, fmt.Errorf("unexpected argument %q (flags only; see rekey %s --help)", flag.CommandLine.Arg(0), cmd))
	}
	if *runners.Runner == "" {
		*runners.Runner = "direct"
	}
	beam.Init()
	set := map[string]bool{}
	flag.CommandLine.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set, nil
}

// load builds the job: the job file if given, then the flags that were set.
func (f *jobFlags) load() (*pipeline.Job, error) {
	j := &pipeline.Job{}
	if f.job != "" {
		b, err := os.ReadFile(f.job)
		if err != nil {
			return nil, withCode(exitUsage, fmt.Errorf("job file: %v", err))
		}
		if j, err = pipeline.ParseJob(b); err != nil {
			return nil, withCode(exitUsage, fmt.Errorf("%s: %v", f.job, err))
		}
	}
	str := map[string]*string{
		"mode": &j.Mode, "run-id": &j.RunID, "source-data": &j.Source.Data, "source-deks": &j.Source.DEKs,
		"source-kek": &j.Source.KEK, "source-wrap": &j.Source.Wrap, "target-data": &j.Target.Data, "target-deks": &j.Target.DEKs,
		"target-kek": &j.Target.KEK, "target-wrap": &j.Target.Wrap, "ledger": &j.Ledger, "dek-column": &j.Columns.DEKID,
		"id-column": &j.Columns.RecordID, "dek-source": &j.DEKSource,
	}
	val := map[string]string{
		"mode": f.mode, "run-id": f.runID, "source-data": f.srcData, "source-deks": f.srcDEKs, "source-kek": f.srcKEK,
		"source-wrap": f.srcWrap, "target-data": f.dstData, "target-deks": f.dstDEKs, "target-kek": f.dstKEK,
		"target-wrap": f.dstWrap, "ledger": f.ledger, "dek-column": f.dekCol, "id-column": f.idCol, "dek-source": f.dekSrc,
	}
	for name, p := range str {
		if f.set[name] {
			*p = val[name]
		}
	}
	if f.set["encrypted"] {
		j.Columns.Encrypted = splitList(f.encrypted)
	}
	if f.set["workers"] {
		j.Workers = f.workers
	}
	if f.set["cache-size"] {
		j.CacheSize = f.cacheSize
	}
	if f.set["max-cell-bytes"] {
		j.MaxCell = f.maxCell
	}
	if f.set["hsm-rate"] {
		j.HSMRate = f.hsmRate
	}
	if f.set["source-hsm-rate"] {
		j.Source.HSMRate = f.srcRate
	}
	if f.set["target-hsm-rate"] {
		j.Target.HSMRate = f.dstRate
	}
	if f.set["max-failures"] {
		j.MaxFailures = f.maxFail
	}
	if f.set["verify-before-commit"] {
		v := f.verifyCommit
		j.VerifyBeforeCommit = &v
	}
	if f.set["incremental"] {
		j.Incremental = f.incremental
	}
	if f.set["success-marker"] {
		v := f.successMarker
		j.SuccessMarker = &v
	}
	if f.set["resume"] {
		j.Resume = f.resume
	}
	f.runIDGiven = j.RunID != ""
	j.Defaults()
	return j, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func defaultWorkers() int { return runtime.NumCPU() }
