package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"rekey/hsmio" // pkcs11: KEKs, for the HSM limit and the baseline; the raw PKCS#11 loop
	"rekey/providers/keys"
	_ "rekey/providers/local"
	"rekey/schemas"
	"rekey/transforms"
)

// config is the suite's flags.
type config struct {
	Dir        string
	JSON       string
	Rekey      string
	Reps       int
	RewrapReps int
	Cells      []int
	DataMiB    int
	Files      int
	ReDEKs     int
	RewrapDEKs int
	Runners    []string
	Workers    int
	TargetWrap string
	LimitTime  time.Duration
	MemMiB     []int
	MemCell    int
	MemFileMiB int
	Sections   map[string]bool
	RewrapW1   bool
	// Compare is a second rekey binary (the previous code): every rekey-v1
	// run of the reencrypt and rewrap sections is made with both, as pairs
	// in alternating order, and each row gets its ratio to it.
	Compare       string
	CompareLabel  string
	GCMKeyRecords int
	// The KMS section (kms.go): DEKs in its table, --workers values of
	// rekey (and goroutines of the raw loop), the --hsm-rate passed to
	// rekey, and its repetitions.
	KMSDEKs    int
	KMSWorkers []int
	KMSRate    float64
	KMSReps    int
	// LedgerRecords are the record counts of the ledger section's runs.
	LedgerRecords []int
	// TinkRecords are the records (cells) of the tink section's dataset.
	TinkRecords int
	// ObjectsCount and ObjectsKiB shape the objects section's objects.
	ObjectsCount int
	ObjectsKiB   int
	CommandLine  string
}

func parseSuiteFlags(args []string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("rekey-bench", flag.ContinueOnError)
	var cells, runners, mem, only, kmsWorkers, ledgerRecs string
	fs.StringVar(&c.Dir, "dir", "demo/bench", "folder for tokens, datasets, logs and results (git-ignored)")
	fs.StringVar(&c.JSON, "json", "", "results JSON (default DIR/results.json)")
	fs.StringVar(&c.Rekey, "rekey", "", "rekey binary to measure (default: go build ./jobs/rekey into DIR/bin)")
	fs.IntVar(&c.Reps, "reps", 3, "repetitions of every measurement (medians are reported)")
	fs.IntVar(&c.RewrapReps, "rewrap-reps", 1, "repetitions of the rewrap runs (each moves --rewrap-deks DEKs, about 100 s per million on SoftHSM; 1 keeps the default run under 10 minutes)")
	fs.StringVar(&cells, "cells", "256,4096,65536", "re-encrypt cell sizes in bytes (plaintext payload per record)")
	fs.IntVar(&c.DataMiB, "data-mib", 128, "payload MiB of each re-encrypt dataset")
	fs.IntVar(&c.Files, "files", 4, "record files per re-encrypt dataset")
	fs.IntVar(&c.ReDEKs, "reencrypt-deks", 64, "DEKs of each re-encrypt dataset (records cycle over them)")
	fs.IntVar(&c.RewrapDEKs, "rewrap-deks", 1000000, "DEKs in the rewrap table")
	fs.StringVar(&runners, "runners", "direct,prism", "Beam runners to measure rekey on")
	fs.IntVar(&c.Workers, "workers", 0, "N, the parallel figure (default: number of CPUs, rekey's default)")
	fs.StringVar(&c.TargetWrap, "target-wrap", "aes-gcm", "target wrap mechanism (aes-gcm or aes-kwp; the source is aes-gcm, rekey gen's default; the raw PKCS#11 loop, rewrap's peer, runs for aes-gcm only)")
	fs.DurationVar(&c.LimitTime, "limit-time", 700*time.Millisecond, "duration of each timed limit sample (AES, HSM, raw PKCS#11 loop)")
	fs.StringVar(&mem, "mem-mib", "64,512", "payload MiB of the memory-flatness datasets, small,large (the issue's check: 1024,8192)")
	fs.IntVar(&c.MemCell, "mem-cell", 4096, "cell size of the memory-flatness datasets")
	fs.IntVar(&c.MemFileMiB, "mem-file-mib", 32, "payload MiB per file of the memory-flatness datasets: the larger dataset has more files of the same shape")
	fs.StringVar(&only, "only", "limits,baseline,reencrypt,rewrap,aes-gcm,memory,counts,kms,ledger,tink,objects", "sections to run (ledger: peak RSS of rekey verify and rekey ledger on runs of --ledger-records records; aes-gcm: datasets in the aes-gcm cell format, written as an application would; counts: in-process runs with HSM calls counted and CPU profiles in DIR/prof; kms: DEK rewrap through local-kms against a raw aws-sdk-go-v2 loop; tink: rewrap of tink-go KMS envelope cells against a raw PKCS#11 loop; objects: S3 Encryption Client objects in a fake S3, rewrap in place (no body read, asserted) and reencrypt against a GET+PUT copy)")
	fs.BoolVar(&c.RewrapW1, "rewrap-w1", false, "also run rewrap with --workers 1 (direct runner)")
	fs.StringVar(&c.Compare, "compare", "", "a second rekey binary (e.g. built from the previous commit): the reencrypt, rewrap and kms runs are made with both, in pairs, and rows show rekey/base")
	fs.StringVar(&c.CompareLabel, "compare-label", "base", "name of the --compare binary in the table")
	fs.IntVar(&c.GCMKeyRecords, "gcm-key-records", 100000, "records (and keys: one per record) of the aes-gcm keys: column dataset whose rewrap is HSM-bound")
	fs.IntVar(&c.KMSDEKs, "kms-deks", 4000, "DEKs in the KMS section's table (wrapped by local-kms when the section starts)")
	fs.StringVar(&kmsWorkers, "kms-workers", "1,4,8", "rekey --workers values of the KMS section, and goroutines of its raw loop (rekey's default for an AWS KMS key, max(CPUs, 32), is always added)")
	fs.Float64Var(&c.KMSRate, "kms-hsm-rate", 100000, "--hsm-rate of the KMS section's rekey runs: far above what local-kms serves, so awskms's default budget (10,000/s) is not what is measured")
	fs.StringVar(&ledgerRecs, "ledger-records", "1000000,4000000", "records of the ledger section's runs (smallest and largest are compared)")
	fs.IntVar(&c.KMSReps, "kms-reps", 0, "repetitions of the KMS section, at most --reps (default --reps)")
	fs.IntVar(&c.TinkRecords, "tink-records", 20000, "records of the tink section's dataset (4 files, one Tink envelope cell each, so one wrapped DEK per record)")
	fs.IntVar(&c.ObjectsCount, "objects-count", 200, "objects of the objects section (S3 Encryption Client v3 objects in an in-process gofakes3)")
	fs.IntVar(&c.ObjectsKiB, "objects-kib", 1024, "plaintext KiB of each object of the objects section")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if c.Cells, err = intList(cells); err != nil {
		return nil, fmt.Errorf("--cells: %v", err)
	}
	if c.MemMiB, err = intList(mem); err != nil || len(c.MemMiB) != 2 {
		return nil, fmt.Errorf("--mem-mib: want small,large")
	}
	if c.LedgerRecords, err = intList(ledgerRecs); err != nil || len(c.LedgerRecords) == 0 {
		return nil, fmt.Errorf("--ledger-records: a list of record counts")
	}
	if c.KMSWorkers, err = kmsWorkerList(kmsWorkers); err != nil {
		return nil, fmt.Errorf("--kms-workers: %v", err)
	}
	if c.KMSReps <= 0 {
		c.KMSReps = c.Reps
	}
	c.Runners = strings.Split(runners, ",")
	c.Sections = map[string]bool{}
	for _, s := range strings.Split(only, ",") {
		c.Sections[strings.TrimSpace(s)] = true
	}
	if c.Workers <= 0 {
		c.Workers = runtime.NumCPU()
	}
	if c.JSON == "" {
		c.JSON = filepath.Join(c.Dir, "results.json")
	}
	switch {
	case c.Reps < 1 || c.RewrapReps < 1:
		return nil, errors.New("--reps and --rewrap-reps must be at least 1")
	case c.MemFileMiB < 1 || c.MemCell < 1:
		return nil, errors.New("--mem-file-mib and --mem-cell must be positive")
	case c.DataMiB < 1 || c.Files < 1 || c.ReDEKs < 1 || c.RewrapDEKs < 1 || c.KMSDEKs < 1:
		return nil, errors.New("--data-mib, --files, --reencrypt-deks, --rewrap-deks and --kms-deks must be positive")
	case c.KMSReps > c.Reps:
		return nil, errors.New("--kms-reps may not exceed --reps")
	case c.KMSRate <= 0:
		return nil, errors.New("--kms-hsm-rate must be positive")
	case c.TinkRecords < tinkFiles:
		return nil, fmt.Errorf("--tink-records must be at least %d (the files)", tinkFiles)
	case c.ObjectsCount < 1 || c.ObjectsKiB < 1:
		return nil, errors.New("--objects-count and --objects-kib must be positive")
	case c.GCMKeyRecords < c.Files:
		return nil, errors.New("--gcm-key-records must be at least --files")
	case c.TargetWrap != schemas.WrapAESGCM && c.TargetWrap != schemas.WrapAESKWP:
		return nil, errors.New("--target-wrap: aes-gcm or aes-kwp (the bench's KEKs are AES)")
	}
	c.CommandLine = strings.Join(append([]string{"rekey-bench"}, args...), " ")
	return c, nil
}

func intList(s string) ([]int, error) {
	var out []int
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive integer", p)
		}
		out = append(out, n)
	}
	return out, nil
}

// Results is what the suite writes as JSON.
type Results struct {
	Command string   `json:"command"`
	Machine Machine  `json:"machine"`
	Config  *config  `json:"config"`
	Rows    []*Row   `json:"rows"`
	Notes   []string `json:"notes"`
	// KMS states the KMS section's goals per path (kmsSummary).
	KMS []string `json:"kms_summary,omitempty"`
	// Reencrypt states issue 14's goals: reencrypt against the per-file
	// user loop and the floor (reencryptGoals), then workers, rewrap,
	// prism and memory (otherGoals); Goals the same as data.
	Reencrypt []string `json:"issue14_summary,omitempty"`
	Goals     []Goal   `json:"issue14_goals,omitempty"`
	// Tink and Objects state those sections' ratios (tinkSummary,
	// objectsSummary).
	Tink    []string `json:"tink_summary,omitempty"`
	Objects []string `json:"objects_summary,omitempty"`
	Took    string   `json:"took"`
}

func suiteMain(args []string) error {
	c, err := parseSuiteFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	began := time.Now()
	res := &Results{Command: c.CommandLine, Machine: describeMachine(), Config: c}
	logs := filepath.Join(c.Dir, "logs")
	scratch := filepath.Join(c.Dir, "scratch")
	for _, d := range []string{logs, scratch} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	step("SoftHSM2 tokens in %s", filepath.Join(c.Dir, "softhsm"))
	if err := setupTokens(filepath.Join(c.Dir, "softhsm")); err != nil {
		return err
	}
	if c.Rekey == "" {
		step("go build -o %s ./jobs/rekey", filepath.Join(c.Dir, "bin", "rekey"))
		if c.Rekey, err = buildRekey(ctx, c.Dir); err != nil {
			return err
		}
	}

	// Datasets.
	step("datasets (rekey gen)")
	var reDS []*dataset
	needRe := c.Sections["limits"] || c.Sections["baseline"] || c.Sections["reencrypt"] || c.Sections["counts"]
	if needRe {
		for _, cell := range c.Cells {
			recs := max(1, int((int64(c.DataMiB)<<20)/int64(cell)/int64(c.Files)))
			ds := newDataset(c.Dir, fmt.Sprintf("re-%d", cell), cell, c.Files, recs, c.ReDEKs)
			if err := generate(ctx, c.Rekey, ds, c.Workers, logs); err != nil {
				return err
			}
			reDS = append(reDS, ds)
		}
	}
	var rwDS, hsmDS *dataset
	if c.Sections["rewrap"] {
		rwDS = newDataset(c.Dir, fmt.Sprintf("rewrap-%d", c.RewrapDEKs), 0, 0, 0, c.RewrapDEKs)
		if err := generate(ctx, c.Rekey, rwDS, c.Workers, logs); err != nil {
			return err
		}
	}
	if c.Sections["limits"] || c.Sections["counts"] {
		// The HSM limit and the counted rewrap need a DEK table, not a
		// large one.
		hsmDS = newDataset(c.Dir, "deks-20000", 0, 0, 0, 20000)
		if err := generate(ctx, c.Rekey, hsmDS, c.Workers, logs); err != nil {
			return err
		}
	}
	var memDS []*dataset
	if c.Sections["memory"] {
		for _, mib := range c.MemMiB {
			files := max(1, mib/c.MemFileMiB)
			recs := max(1, int((int64(c.MemFileMiB)<<20)/int64(c.MemCell)))
			ds := newDataset(c.Dir, fmt.Sprintf("mem-%dMiB", mib), c.MemCell, files, recs, c.ReDEKs)
			if err := generate(ctx, c.Rekey, ds, c.Workers, logs); err != nil {
				return err
			}
			memDS = append(memDS, ds)
		}
	}

	var ledgerRs []*ledgerRun
	if c.Sections["ledger"] {
		step("ledger section: runs of %v records whose ledgers verify and ledger read", c.LedgerRecords)
		if ledgerRs, err = setupLedgerRuns(ctx, c, logs); err != nil {
			return fmt.Errorf("ledger section: %w", err)
		}
	}

	// Keys for the limits, the baseline and the aes-gcm datasets: opened
	// through providers/keys exactly as the pipeline opens them (sessions
	// = workers).
	var src, dst keys.KEK
	var hsmRows []schemas.DEKRow
	if c.Sections["limits"] || c.Sections["baseline"] || c.Sections["aes-gcm"] {
		if src, err = keys.Open(ctx, sourceKEK(), keys.Options{Sessions: c.Workers}); err != nil {
			return fmt.Errorf("source KEK: %w", err)
		}
		if dst, err = keys.Open(ctx, targetKEK(), keys.Options{Wrap: c.TargetWrap, Sessions: c.Workers}); err != nil {
			return fmt.Errorf("target KEK: %w", err)
		}
		if hsmDS != nil && (c.Sections["limits"] || c.Sections["baseline"]) {
			all, err := transforms.ReadDEKTable(ctx, hsmDS.DEKs)
			if err != nil {
				return err
			}
			hsmRows = all[:min(len(all), 4096)]
		}
	}
	// The raw PKCS#11 loop's DEKs: the HSM limit's, when both sides are
	// aes-gcm (it is the aes-gcm -> aes-gcm peer).
	var rawWrapped [][]byte
	var rawIDs []string
	if c.TargetWrap == schemas.WrapAESGCM {
		for _, r := range hsmRows {
			if r.Wrap == schemas.WrapAESGCM {
				rawWrapped, rawIDs = append(rawWrapped, r.Wrapped), append(rawIDs, r.DEKID)
			}
		}
	}

	// aes-gcm datasets (the aes-gcm section): the re-encrypt datasets'
	// shape with application-written cells and keys in a DEK table; and two
	// with keys in a column, one key per record (rewrap is HSM-bound) and
	// --reencrypt-deks keys over 4 KiB cells (rewrap is Parquet-bound).
	var gcmRe []*dataset
	var gcmColKeys, gcmColShared *dataset
	if c.Sections["aes-gcm"] {
		step("aes-gcm datasets (written by this bench as an application would)")
		for _, cell := range c.Cells {
			recs := max(1, int((int64(c.DataMiB)<<20)/int64(cell)/int64(c.Files)))
			ds := newGCMDataset(c.Dir, fmt.Sprintf("gcm-table-%d", cell), cell, c.Files, recs, c.ReDEKs, false)
			if err := generateGCM(ctx, src, ds, c.Workers); err != nil {
				return err
			}
			gcmRe = append(gcmRe, ds)
		}
		perFile := c.GCMKeyRecords / c.Files
		gcmColKeys = newGCMDataset(c.Dir, fmt.Sprintf("gcm-column-keys-%d", perFile*c.Files), 256, c.Files, perFile, perFile*c.Files, true)
		if err := generateGCM(ctx, src, gcmColKeys, c.Workers); err != nil {
			return err
		}
		recs := max(1, int((int64(c.DataMiB)<<20)/4096/int64(c.Files)))
		gcmColShared = newGCMDataset(c.Dir, "gcm-column-4096", 4096, c.Files, recs, c.ReDEKs, true)
		if err := generateGCM(ctx, src, gcmColShared, c.Workers); err != nil {
			return err
		}
	}

	// The KMS section's server and DEK table (kms.go).
	var kb *kmsBench
	if c.Sections["kms"] {
		step("local-kms and a %d-DEK table wrapped by it", c.KMSDEKs)
		kb, err = setupKMS(ctx, c, false)
		switch {
		case err != nil && kmsUnavailable(err):
			fmt.Fprintf(os.Stderr, "  kms section skipped: %v\n", err)
			c.Sections["kms"] = false
			res.Notes = append(res.Notes, "kms section skipped: "+err.Error())
		case err != nil:
			return fmt.Errorf("KMS section: %w", err)
		default:
			defer kb.close()
		}
	}

	// The tink section's dataset, written by tink-go on the source token.
	var tinkDS *dataset
	if c.Sections["tink"] {
		step("tink dataset (written by tink-go's KMS envelope AEAD, remote AEAD on the source token)")
		tinkDS = newTinkDataset(c.Dir, c.TinkRecords)
		if err := generateTink(ctx, tinkDS, c.Workers, logs); err != nil {
			return fmt.Errorf("tink section: %w", err)
		}
	}

	// The objects section's fake S3 and objects (objects.go), with the KMS
	// section's local-kms when it runs one.
	var ob *objBench
	if c.Sections["objects"] {
		step("objects: gofakes3 on 127.0.0.1 and %d S3 Encryption Client objects of %d KiB (local-kms)", c.ObjectsCount, c.ObjectsKiB)
		var ks *kmsServer
		if kb != nil {
			ks = &kb.kmsServer
		}
		ob, err = setupObjects(ctx, c, ks)
		switch {
		case err != nil && kmsUnavailable(err):
			fmt.Fprintf(os.Stderr, "  objects section skipped: %v\n", err)
			c.Sections["objects"] = false
			res.Notes = append(res.Notes, "objects section skipped: "+err.Error())
		case err != nil:
			return fmt.Errorf("objects section: %w", err)
		default:
			defer ob.close()
		}
	}

	t := newTable()
	// With --compare, every rekey-v1 run is made by both binaries, one
	// after the other; the order alternates per repetition (base first in
	// the 1st, 3rd, ...), so neither binary always runs on a warmer page
	// cache or a quieter machine. The aes-gcm rows are not compared: code
	// before issue 11 does not read that format.
	type bin struct {
		path, tag string
		base      bool
	}
	binsFor := func(rep int) []bin {
		cur := bin{path: c.Rekey}
		if c.Compare == "" {
			return []bin{cur}
		}
		b := bin{path: c.Compare, tag: "-" + c.CompareLabel, base: true}
		if rep%2 == 0 {
			return []bin{b, cur}
		}
		return []bin{cur, b}
	}
	add := func(b bin, k string, row *Row, v, recPerS float64, cr childResult) {
		if b.base {
			k = baseKey(k)
			row.Section, row.What = "base", row.What+" ("+c.CompareLabel+")"
		}
		t.addRun(k, row, v, recPerS, cr)
	}

	N := c.Workers
	gs := []int{1}
	if N > 1 {
		gs = append(gs, N)
	}
	for rep := 0; rep < c.Reps; rep++ {
		step("repetition %d of %d", rep+1, c.Reps)
		if c.Sections["limits"] {
			for _, cell := range c.Cells {
				for _, g := range gs {
					r, err := aesRate(cell, g, c.LimitTime, false)
					if err != nil {
						return fmt.Errorf("AES limit: %w", err)
					}
					t.add(keyAES(cell, g), &Row{Section: "limit", What: "AES-256-GCM open+seal", Cell: cell, Workers: g, Unit: "MB/s"}, r/1e6, r/float64(cell))
				}
				r, err := aesRate(cell, N, c.LimitTime, true)
				if err != nil {
					return fmt.Errorf("AES limit: %w", err)
				}
				t.add(keyAESVerify(cell, N), &Row{Section: "limit", What: "AES-256-GCM open+seal+verify-open (info)", Cell: cell, Workers: N, Unit: "MB/s"}, r/1e6, r/float64(cell))
			}
			for _, ds := range reDS {
				for _, g := range gs {
					r, err := parquetCopyRate(ds, filepath.Join(scratch, "pqcopy"), g, true)
					if err != nil {
						return fmt.Errorf("Parquet limit: %w", err)
					}
					t.add(keyPQ(ds.Cell, g), &Row{Section: "limit", What: "Parquet copy (rows, snappy: as rekey)", Cell: ds.Cell, Workers: g, Unit: "MB/s"}, r/1e6, r/float64(ds.Cell))
				}
				r, err := parquetCopyRate(ds, filepath.Join(scratch, "pqcopy"), N, false)
				if err != nil {
					return fmt.Errorf("Parquet limit: %w", err)
				}
				t.add(keyPQRaw(ds.Cell, N), &Row{Section: "limit", What: "Parquet copy, uncompressed (info)", Cell: ds.Cell, Workers: N, Unit: "MB/s"}, r/1e6, r/float64(ds.Cell))
			}
			if len(hsmRows) > 0 {
				for _, verify := range []bool{false, true} {
					for _, g := range gs {
						r, err := hsmRate(ctx, src, dst, hsmRows, g, c.LimitTime, verify)
						if err != nil {
							return fmt.Errorf("HSM limit: %w", err)
						}
						what := "HSM unwrap+wrap (" + c.TargetWrap + ")"
						ops := int64(2)
						if verify {
							what, ops = "HSM unwrap+wrap+verify-unwrap ("+c.TargetWrap+")", 3
						}
						t.add(keyHSM(g, verify), &Row{Section: "limit", What: what, Workers: g, Unit: "DEKs/s", HSMOpsPerDEK: ops}, r, 0)
					}
				}
				// The peer for rewrap: the same per-DEK token work
				// (aes-gcm -> aes-gcm with verify) in a raw PKCS#11 loop on
				// the same keys and DEKs, with a session copy of each key
				// (the best handle SoftHSM2 allows) and, for information,
				// the token objects.
				if len(rawWrapped) > 0 {
					for _, copies := range []bool{true, false} {
						for _, g := range gs {
							r, err := hsmio.RawGCMRewrapLoop(ctx, sourceKEK(), targetKEK(), rawWrapped, rawIDs, g, copies, c.LimitTime)
							if err != nil {
								return fmt.Errorf("raw PKCS#11 loop: %w", err)
							}
							what := "raw PKCS#11 loop unwrap+wrap+verify, session copy"
							if !copies {
								what = "raw PKCS#11 loop unwrap+wrap+verify, token object (info)"
							}
							t.add(keyHSMRaw(g, copies), &Row{Section: "limit", What: what, Workers: g, Unit: "DEKs/s", HSMOpsPerDEK: 3}, r, 0)
						}
					}
				}
			}
		}
		if c.Sections["baseline"] {
			for _, ds := range reDS {
				r, ops, err := baseline(ctx, ds, src, dst, filepath.Join(scratch, "baseline"), fmt.Sprintf("baseline-%d", rep))
				if err != nil {
					return fmt.Errorf("baseline: %w", err)
				}
				t.add(keyBase(ds.Cell), &Row{Section: "baseline", What: "1 goroutine, no Beam, no verify", Cell: ds.Cell, Workers: 1, Unit: "MB/s",
					DEKs: int64(ds.NumDEKs), HSMOps: ops, HSMOpsNote: "counted"}, r/1e6, r/float64(ds.Cell))
			}
		}
		if c.Sections["reencrypt"] {
			for _, ds := range reDS {
				// Issue 14's peers run on the same dataset in the same
				// repetition as rekey's runs of it: after them in the 1st,
				// 3rd, ... repetition, before them in the others.
				peersFirst := rep%2 == 1
				if peersFirst {
					if err := peerRuns(ctx, c, t, ds, scratch, logs, rep); err != nil {
						return err
					}
				}
				for _, runner := range c.Runners {
					for _, w := range gs {
						rr := rekeyRun{Mode: schemas.ModeReencrypt, Runner: runner, Workers: w, TargetWrap: c.TargetWrap}
						if w == N {
							rr.Workers = 0 // rekey's default
						}
						for _, b := range binsFor(rep) {
							id := fmt.Sprintf("re-%d-%s-w%d-r%d%s", ds.Cell, runner, w, rep, b.tag)
							cr, m, err := runRekey(ctx, b.path, ds, rr, scratch, logs, id)
							if err != nil {
								return err
							}
							if m.Totals.Records != ds.records() {
								return fmt.Errorf("run %s: %d records, want %d", id, m.Totals.Records, ds.records())
							}
							secs := cr.Pipeline.Seconds()
							row := &Row{Section: "rekey", What: "reencrypt", Cell: ds.Cell, Workers: w, Runner: runner, Unit: "MB/s",
								DEKs: m.Totals.DEKs, HSMOps: 4 * m.Totals.DEKs, HSMOpsNote: "estimate (plan): 4 per DEK"}
							add(b, keyRe(ds.Cell, runner, w), row, float64(ds.payloadBytes())/secs/1e6, float64(ds.records())/secs, cr)
						}
					}
				}
				if !peersFirst {
					if err := peerRuns(ctx, c, t, ds, scratch, logs, rep); err != nil {
						return err
					}
				}
			}
		}
		if c.Sections["rewrap"] && rep < c.RewrapReps {
			type cfg struct {
				runner string
				w      int
			}
			var cfgs []cfg
			for _, runner := range c.Runners {
				cfgs = append(cfgs, cfg{runner, N})
			}
			if c.RewrapW1 && N > 1 {
				cfgs = append(cfgs, cfg{"direct", 1})
			}
			// Issue 14's rewrap peer, the raw session-copy loop (1 and N
			// goroutines), runs right before rekey's rewrap runs in the
			// 1st, 3rd, ... repetition and right after them in the others,
			// for 3 x --limit-time each: the HSM's speed on a shared
			// machine drifts more between sections than within one.
			rawPeer := func() error {
				if len(rawWrapped) == 0 {
					return nil
				}
				for _, g := range gs {
					r, err := hsmio.RawGCMRewrapLoop(ctx, sourceKEK(), targetKEK(), rawWrapped, rawIDs, g, true, 3*c.LimitTime)
					if err != nil {
						return fmt.Errorf("raw PKCS#11 loop: %w", err)
					}
					t.add(keyRwRaw(g), &Row{Section: "peer", What: "raw PKCS#11 loop unwrap+wrap+verify, session copy, next to rewrap", Workers: g, Unit: "DEKs/s", HSMOpsPerDEK: 3}, r, 0)
					// For information: the same loop with rekey's
					// AES-GCM calls (no output-size query), i.e. what
					// is left of rekey's own work per DEK.
					r, err = hsmio.RawGCMRewrapLoop(ctx, sourceKEK(), targetKEK(), rawWrapped, rawIDs, g, true, 3*c.LimitTime, hsmio.OneCallGCM)
					if err != nil {
						return fmt.Errorf("raw PKCS#11 loop, one call per operation: %w", err)
					}
					t.add(keyRwRawOne(g), &Row{Section: "peer", What: "same, AES-GCM calls as rekey's keys make them (info)", Workers: g, Unit: "DEKs/s", HSMOpsPerDEK: 3}, r, 0)
				}
				return nil
			}
			if rep%2 == 0 {
				if err := rawPeer(); err != nil {
					return err
				}
			}
			for _, k := range cfgs {
				rr := rekeyRun{Mode: schemas.ModeRewrap, Runner: k.runner, TargetWrap: c.TargetWrap}
				if k.w != N {
					rr.Workers = k.w
				}
				for _, b := range binsFor(rep) {
					id := fmt.Sprintf("rewrap-%s-w%d-r%d%s", k.runner, k.w, rep, b.tag)
					cr, m, err := runRekey(ctx, b.path, rwDS, rr, scratch, logs, id)
					if err != nil {
						return err
					}
					if m.Totals.DEKsMigrated != int64(rwDS.NumDEKs) {
						return fmt.Errorf("run %s: %d DEKs migrated, want %d", id, m.Totals.DEKsMigrated, rwDS.NumDEKs)
					}
					secs := cr.Pipeline.Seconds()
					row := &Row{Section: "rekey", What: "rewrap", Workers: k.w, Runner: k.runner, Unit: "DEKs/s",
						DEKs: m.Totals.DEKs, HSMOps: 3 * m.Totals.DEKs, HSMOpsNote: "estimate (plan): 3 per DEK"}
					add(b, keyRw(k.runner, k.w), row, float64(rwDS.NumDEKs)/secs, 0, cr)
				}
			}
			if rep%2 == 1 {
				if err := rawPeer(); err != nil {
					return err
				}
			}
		}
		if c.Sections["aes-gcm"] {
			if err := gcmRuns(ctx, c, t, rep, gcmRe, gcmColKeys, gcmColShared, scratch, logs); err != nil {
				return err
			}
		}
		if c.Sections["kms"] && rep < c.KMSReps {
			if err := kmsRuns(ctx, c, t, kb, rep, scratch, logs); err != nil {
				return fmt.Errorf("KMS section: %w", err)
			}
		}
		if c.Sections["tink"] {
			if err := tinkRuns(ctx, c, t, tinkDS, rep, scratch, logs); err != nil {
				return err
			}
		}
		if c.Sections["objects"] {
			if err := objectsRuns(ctx, c, t, ob, rep, scratch, logs); err != nil {
				return err
			}
		}
		if c.Sections["ledger"] {
			if err := ledgerRuns(ctx, c, t, ledgerRs, rep, logs); err != nil {
				return fmt.Errorf("ledger section: %w", err)
			}
		}
		if c.Sections["memory"] {
			for _, ds := range memDS {
				id := fmt.Sprintf("mem-%s-r%d", ds.Name, rep)
				cr, m, err := runRekey(ctx, c.Rekey, ds, rekeyRun{Mode: schemas.ModeReencrypt, Runner: "direct", TargetWrap: c.TargetWrap}, scratch, logs, id)
				if err != nil {
					return err
				}
				secs := cr.Pipeline.Seconds()
				row := &Row{Section: "memory", What: fmt.Sprintf("reencrypt %d MiB", ds.payloadBytes()>>20), Cell: ds.Cell, Workers: N, Runner: "direct", Unit: "MB/s",
					DEKs: m.Totals.DEKs, HSMOps: 4 * m.Totals.DEKs, HSMOpsNote: "estimate (plan): 4 per DEK"}
				t.addRun("mem/"+ds.Name, row, float64(ds.payloadBytes())/secs/1e6, float64(ds.records())/secs, cr)
			}
		}
	}
	if c.Sections["counts"] {
		step("in-process runs with HSM calls counted, under the CPU profiler")
		for _, ds := range reDS {
			pr, err := countRun(ctx, c, schemas.ModeReencrypt, ds.Name, logs)
			if err != nil {
				return err
			}
			t.add("counts/reencrypt/"+ds.Name, &Row{Section: "counted", What: "reencrypt, in-process", Cell: ds.Cell, Workers: c.Workers, Runner: "direct", Unit: "MB/s",
				DEKs: pr.DEKs, HSMOps: pr.HSMOps, HSMOpsNote: fmt.Sprintf("counted: %d unwrap, %d wrap, %d random", pr.Unwraps, pr.Wraps, pr.Generates),
				Note: "profile: " + pr.CPUProfile}, pr.MBPerS, float64(pr.Records)/pr.Seconds)
		}
		if hsmDS != nil {
			pr, err := countRun(ctx, c, schemas.ModeRewrap, hsmDS.Name, logs)
			if err != nil {
				return err
			}
			t.add("counts/rewrap/"+hsmDS.Name, &Row{Section: "counted", What: "rewrap, in-process", Workers: c.Workers, Runner: "direct", Unit: "DEKs/s",
				DEKs: pr.DEKs, HSMOps: pr.HSMOps, HSMOpsNote: fmt.Sprintf("counted: %d unwrap, %d wrap, %d random", pr.Unwraps, pr.Wraps, pr.Generates),
				Note: "profile: " + pr.CPUProfile}, pr.DEKsPerS, 0)
		}
	}
	t.ratios(c, memDS)
	res.Rows = t.rows
	res.Machine.LoadEnd = loadAvg()
	res.Took = time.Since(began).Round(time.Second).String()
	res.Notes = append(notes(c), res.Notes...)
	res.Notes = append(res.Notes, ledgerSummary(t, ledgerRs)...)
	if c.Sections["kms"] {
		res.KMS = kmsSummary(t, c)
	}
	if c.Sections["tink"] {
		res.Tink = tinkSummary(t, c)
		res.Notes = append(res.Notes, tinkNotes(c, tinkDS)...)
	}
	if c.Sections["reencrypt"] {
		res.Reencrypt, res.Goals = reencryptGoals(t, c)
	}
	lines, goals := otherGoals(t, c, memDS)
	res.Reencrypt, res.Goals = append(res.Reencrypt, lines...), append(res.Goals, goals...)
	if c.Sections["objects"] {
		res.Objects = objectsSummary(t, c)
		res.Notes = append(res.Notes, objectsNotes(c)...)
	}
	t.print(os.Stdout, res)
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(c.JSON, b, 0o644); err != nil {
		return err
	}
	fmt.Printf("\nJSON: %s\n", c.JSON)
	return nil
}

func newDataset(root, name string, cell, files, records, deks int) *dataset {
	dir := filepath.Join(root, "data", name)
	return &dataset{Name: name, Dir: dir, Data: filepath.Join(dir, "data"), DEKs: filepath.Join(dir, "deks"),
		Cell: cell, Files: files, Records: records, NumDEKs: deks}
}

func step(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "== "+format+"\n", a...)
}

func notes(c *config) []string {
	out := []string{
		"MB/s is 10^6 bytes of plaintext payload (records x cell size) per second, for limits, baseline and rekey alike.",
		"rekey figures use rekey's own elapsed time (beam.Run start to end, as printed by `rekey run`): it includes the DEK stage and pipeline start-up, not process start or preflight; wall_s includes everything.",
		"The composed bound is 1/(1/AES open+seal + 1/Parquet copy) at the same goroutine count (1 or N); it does not include verify-before-commit, which rekey does (see the open+seal+verify-open row for its cost).",
		"The HSM limit runs the pipeline's per-DEK calls through providers/keys on the same tokens (sessions = N). The raw PKCS#11 loop (hsmio.RawGCMRewrapLoop, aes-gcm target only) makes the same token calls per DEK (C_Decrypt on the source, C_Encrypt and the verify C_Decrypt on the target, CKM_AES_GCM) on the same keys and DEKs with one session per goroutine and, in the session-copy rows, its own C_CopyObject copy of each key; the unwrap+wrap+verify-unwrap row through providers/keys and the raw token-object row show 'vs limit' against the raw session-copy row at the same goroutines. rewrap's 'vs limit' is against the best raw session-copy row, 1 or N goroutines (issue 14's peer: >= 0.90x): the one run right next to rekey's rewrap runs (peer rows 'next to rewrap', before them in the 1st, 3rd, ... repetition and after them in the others) when the rewrap section made it, else the limits section's; or against unwrap+wrap+verify-unwrap through providers/keys when there is no raw row (aes-kwp target).",
		"HSM operations of subprocess runs are the plan's estimate (rewrap 3 per DEK, reencrypt 4 per DEK); `rekey-bench profile` counts actual calls in-process.",
		"Peak RSS is ru_maxrss of the rekey child from wait4 (prism runs in-process in the same child).",
		fmt.Sprintf("Medians of %d repetitions (rewrap: %d, kms: %d); spread = (max-min)/median. The machine is shared: expect noise.", c.Reps, c.RewrapReps, c.KMSReps),
	}
	if c.Sections["reencrypt"] {
		out = append(out, peerNotes(c)...)
	}
	if c.Sections["aes-gcm"] {
		out = append(out, "aes-gcm rows: datasets written by this bench as an application would (crypto/cipher AES-256-GCM, base64 text cells of nonce|ciphertext|tag, AAD = record id; keys wrapped by the source KEK through providers/keys). MB/s counts plaintext payload, as elsewhere; the cells on disk are base64, 4/3 larger. 'vs rekey-v1' is against the rekey-v1 row of the same cell size, runner and workers (reencrypt) or the rekey-v1 DEK-table rewrap (1 key/record).")
	}
	if c.Sections["kms"] {
		out = append(out, kmsNotes(c)...)
	}
	if c.Compare != "" {
		out = append(out, fmt.Sprintf("--compare: every reencrypt, rewrap and kms (rekey) run was made by %s (%s) and by the measured rekey, one right after the other, base first in the 1st, 3rd, ... repetition and second in the others; 'vs %s' is median/median, and the pairs column each repetition's ratio.", c.CompareLabel, c.Compare, c.CompareLabel))
	}
	return out
}
