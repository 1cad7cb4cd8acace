package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners/direct"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism"

	"rekey/pipeline"
	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

// countScheme wraps another key URI ("benchcount:pkcs11:...") so the
// in-process profile run can count the HSM calls the pipeline really
// makes. Only this command registers it; rekey itself never sees it.
const countScheme = "benchcount"

// hsmCalls are the calls made through counted KEKs in this process.
var hsmCalls struct {
	unwrap, wrap, generate atomic.Int64
}

type countedKEK struct {
	keys.KEK
}

func (k countedKEK) Wrap(ctx context.Context, b keys.Binding, dek *keys.DEK) ([]byte, error) {
	hsmCalls.wrap.Add(1)
	return k.KEK.Wrap(ctx, b, dek)
}

func (k countedKEK) Unwrap(ctx context.Context, b keys.Binding, mech string, wrapped []byte) (*keys.DEK, error) {
	hsmCalls.unwrap.Add(1)
	return k.KEK.Unwrap(ctx, b, mech, wrapped)
}

// GenerateDEK forwards to the HSM's RNG when the inner KEK has one, as the
// pipeline would call it; otherwise it reports an error the pipeline never
// sees, because MintDEKsFn asks by type assertion first.
func (k countedKEK) GenerateDEK(ctx context.Context) (*keys.DEK, error) {
	g, ok := k.KEK.(keys.Generator)
	if !ok {
		return nil, errors.New("benchcount: inner KEK has no generator")
	}
	hsmCalls.generate.Add(1)
	return g.GenerateDEK(ctx)
}

// Matches forwards the DEK table's kek-column check.
func (k countedKEK) Matches(ref string) bool { return transforms.KEKMatches(k.KEK, ref) }

func init() {
	keys.Register(keys.Scheme{Name: countScheme, Open: func(ctx context.Context, uri string, opts keys.Options) (keys.KEK, error) {
		inner, err := keys.Open(ctx, strings.TrimPrefix(uri, countScheme+":"), opts)
		if err != nil {
			return nil, err
		}
		return countedKEK{inner}, nil
	}, Parse: func(uri string) (keys.Ref, error) {
		return keys.ParseRef(strings.TrimPrefix(uri, countScheme+":"))
	}})
}

// profileResult is what `rekey-bench profile` prints and writes as JSON.
type profileResult struct {
	Mode        string  `json:"mode"`
	Dataset     string  `json:"dataset"`
	Workers     int     `json:"workers"`
	SkipVerify  bool    `json:"skip_verify"`
	Seconds     float64 `json:"seconds"`
	DEKs        int64   `json:"deks"`
	Records     int64   `json:"records"`
	PayloadMB   float64 `json:"payload_mb"`
	MBPerS      float64 `json:"mb_per_s,omitempty"`
	DEKsPerS    float64 `json:"deks_per_s,omitempty"`
	Unwraps     int64   `json:"hsm_unwraps"`
	Wraps       int64   `json:"hsm_wraps"`
	Generates   int64   `json:"hsm_random"`
	HSMOps      int64   `json:"hsm_ops"`
	CacheLoads  int64   `json:"cache_loads"`
	CPUProfile  string  `json:"cpu_profile,omitempty"`
	HeapProfile string  `json:"heap_profile,omitempty"`
}

// profileMain runs one migration in this process on the direct runner (or
// prism, --runner), under the CPU profiler, with HSM calls counted.
func profileMain(args []string) error {
	fs := flag.NewFlagSet("rekey-bench profile", flag.ContinueOnError)
	dir := fs.String("dir", "demo/bench", "the suite's folder (tokens and datasets made by a suite run)")
	mode := fs.String("mode", "reencrypt", "reencrypt or rewrap")
	name := fs.String("dataset", "re-4096", "dataset under DIR/data (re-<cell>, rewrap-<n>, mem-<n>MiB)")
	workers := fs.Int("workers", 0, "rekey --workers (0: number of CPUs)")
	runner := fs.String("runner", "direct", "direct or prism (in-process, its workers in this process too)")
	wrap := fs.String("target-wrap", "aes-gcm", "target wrap mechanism")
	skipVerify := fs.Bool("skip-verify", false, "turn verify-before-commit off (to measure what it costs; never in production)")
	cpu := fs.String("cpuprofile", "", "CPU profile output (default DIR/prof/<mode>-<dataset>.cpu.pprof)")
	heap := fs.Bool("heapprofile", false, "also write a heap profile at the end")
	kmsTag := fs.String("kms", "", "profile the KMS section's rewrap instead: reencrypt or client (starts local-kms, wraps a fresh table; the raw loop is profiled too)")
	kmsDEKs := fs.Int("kms-deks", 20000, "DEKs of the --kms table")
	kmsRate := fs.Float64("kms-hsm-rate", 100000, "--hsm-rate of the --kms run")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *kmsTag != "" {
		return profileKMS(*dir, *kmsTag, *kmsDEKs, *kmsRate, *workers)
	}
	if *mode != schemas.ModeReencrypt && *mode != schemas.ModeRewrap {
		return fmt.Errorf("--mode: reencrypt or rewrap")
	}
	if err := setupTokens(filepath.Join(*dir, "softhsm")); err != nil {
		return err
	}
	ds := newDataset(*dir, *name, 0, 0, 0, 0)
	if err := readDatasetFormat(ds); err != nil {
		return err
	}
	if _, err := os.Stat(ds.Dir); err != nil {
		return fmt.Errorf("dataset %s: %v (run the suite first, e.g. rekey-bench --only reencrypt)", *name, err)
	}
	profDir := filepath.Join(*dir, "prof")
	if err := os.MkdirAll(profDir, 0o755); err != nil {
		return err
	}
	tag := *mode + "-" + *name
	if *skipVerify {
		tag += "-noverify"
	}
	if *cpu == "" {
		*cpu = filepath.Join(profDir, tag+".cpu.pprof")
	}
	runID := fmt.Sprintf("profile-%d", time.Now().UnixNano())
	out := filepath.Join(*dir, "scratch", runID)
	defer os.RemoveAll(out)
	j := &pipeline.Job{Mode: *mode, RunID: runID,
		Source: pipeline.Side{DEKs: ds.DEKs, KEK: sourceKEK(), Format: ds.Format, FormatOptions: ds.FormatOptions},
		Target: pipeline.Side{DEKs: filepath.Join(out, "deks"), KEK: targetKEK(), Wrap: *wrap},
		Ledger: filepath.Join(out, "ledger"), Workers: *workers}
	if *mode == schemas.ModeReencrypt || ds.ColumnKeys() || ds.CellKeys() {
		j.Source.Data, j.Target.Data = ds.Data, filepath.Join(out, "data")
	}
	if ds.ColumnKeys() && *mode == schemas.ModeRewrap || ds.CellKeys() {
		j.Target.DEKs = "" // the keys are rewritten in target.data
	}
	if ds.CellKeys() {
		j.Target.Wrap = "" // the format's: Tink's remote AEAD is AES-GCM
		if *mode == schemas.ModeReencrypt {
			j.Target.Format, j.Target.FormatOptions = ds.Format, ds.FormatOptions
		}
	}
	j.Defaults()
	if err := j.Validate(); err != nil {
		return err
	}
	spec := j.Spec()
	spec.SourceKEK = countScheme + ":" + spec.SourceKEK
	spec.TargetKEK = countScheme + ":" + spec.TargetKEK
	spec.SkipVerify = *skipVerify
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	beam.Init()
	p, s := beam.NewPipelineWithRoot()
	pipeline.Build(s, spec)

	f, err := os.Create(*cpu)
	if err != nil {
		return err
	}
	defer f.Close()
	ctx := context.Background()
	runtime.GC()
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	start := time.Now()
	var runErr error
	switch *runner {
	case "direct":
		_, runErr = direct.Execute(ctx, p)
	case "prism":
		_, runErr = prism.Execute(ctx, p)
	default:
		runErr = fmt.Errorf("--runner %q: want direct or prism", *runner)
	}
	el := time.Since(start)
	pprof.StopCPUProfile()
	if runErr != nil {
		return fmt.Errorf("run: %w", runErr)
	}
	res := profileResult{Mode: *mode, Dataset: *name, Workers: spec.Workers, SkipVerify: *skipVerify, Seconds: el.Seconds(), CPUProfile: *cpu,
		Unwraps: hsmCalls.unwrap.Load(), Wraps: hsmCalls.wrap.Load(), Generates: hsmCalls.generate.Load(), CacheLoads: transforms.Unwraps()}
	res.HSMOps = res.Unwraps + res.Wraps + res.Generates
	if res.Workers == 0 {
		res.Workers = runtime.NumCPU()
	}
	if *heap {
		res.HeapProfile = filepath.Join(profDir, tag+".heap.pprof")
		h, err := os.Create(res.HeapProfile)
		if err != nil {
			return err
		}
		if err := pprof.WriteHeapProfile(h); err != nil {
			return err
		}
		h.Close()
	}
	b, err := os.ReadFile(ledger.ManifestPath(j.Ledger, runID))
	if err != nil {
		return err
	}
	var m schemas.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	if m.Totals.Failed > 0 {
		return fmt.Errorf("run %s: %d failed", runID, m.Totals.Failed)
	}
	res.DEKs, res.Records = m.Totals.DEKs, m.Totals.Records
	if *mode == schemas.ModeReencrypt {
		// Payload = ciphertext written minus each cell's envelope.
		res.PayloadMB = float64(m.Totals.Bytes-m.Totals.RecordsMigrated*schemas.CellOverhead) / 1e6
		res.MBPerS = res.PayloadMB / el.Seconds()
	} else {
		res.DEKsPerS = float64(res.DEKs) / el.Seconds()
	}
	jb, _ := json.MarshalIndent(res, "", "  ")
	fmt.Println(string(jb))
	if err := os.WriteFile(filepath.Join(profDir, tag+".json"), jb, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "top costs: go tool pprof -top -nodecount=30 %s\n", *cpu)
	return nil
}

// profileKMS profiles the KMS section's rewrap on one path in this process:
// first the raw SDK loop, then the pipeline (direct runner), each with its
// own CPU profile. local-kms and its proxy run in a child process
// (kms-serve), so the profiles hold the measured client alone; the code
// measured carries the label bench=raw or bench=rekey (GC and scheduler
// work is unlabelled).
// KEK calls are not counted here: the counting wrapper would hide the
// custodian's ReEncrypt from keys.CanRewrap.
func profileKMS(dir, tag string, deks int, rate float64, workers int) error {
	path, err := kmsPathByTag(tag)
	if err != nil {
		return err
	}
	if workers <= 0 {
		workers = kmsDefaultWorkers()
	}
	ctx := context.Background()
	c := &config{Dir: dir, KMSDEKs: deks}
	kb, err := setupKMS(ctx, c, true)
	if err != nil {
		return err
	}
	defer kb.close()
	profDir := filepath.Join(dir, "prof")
	if err := os.MkdirAll(profDir, 0o755); err != nil {
		return err
	}
	profiled := func(name, label string, fn func() error) (string, time.Duration, error) {
		file := filepath.Join(profDir, fmt.Sprintf("kms-%s-w%d-%s.cpu.pprof", tag, workers, name))
		f, err := os.Create(file)
		if err != nil {
			return "", 0, err
		}
		defer f.Close()
		runtime.GC()
		if err := pprof.StartCPUProfile(f); err != nil {
			return "", 0, err
		}
		start := time.Now()
		pprof.Do(ctx, pprof.Labels("bench", label), func(context.Context) { err = fn() })
		el := time.Since(start)
		pprof.StopCPUProfile()
		return file, el, err
	}
	var rawRate float64
	rawProf, _, err := profiled("raw", "raw", func() (err error) {
		rawRate, err = kmsRawRate(ctx, kb.kmsTarget, kb.rows, path, workers)
		return err
	})
	if err != nil {
		return err
	}

	runID := fmt.Sprintf("profile-kms-%d", time.Now().UnixNano())
	out := filepath.Join(dir, "scratch", runID)
	defer os.RemoveAll(out)
	j := &pipeline.Job{Mode: schemas.ModeRewrap, RunID: runID,
		Source: pipeline.Side{DEKs: kb.ds.DEKs, KEK: kb.Src},
		Target: pipeline.Side{DEKs: filepath.Join(out, "deks"), KEK: kb.Dst[tag]},
		Ledger: filepath.Join(out, "ledger"), Workers: workers, HSMRate: rate}
	j.Defaults()
	if err := j.Validate(); err != nil {
		return err
	}
	spec := j.Spec()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	beam.Init()
	p, s := beam.NewPipelineWithRoot()
	pipeline.Build(s, spec)
	rekeyProf, el, err := profiled("rekey", "rekey", func() error {
		_, err := direct.Execute(ctx, p)
		return err
	})
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	if err := checkLedgerPath(ctx, j.Ledger, runID, path.Ledger); err != nil {
		return err
	}
	m, err := ledger.ReadManifest(ctx, j.Ledger, runID)
	if err != nil {
		return err
	}
	if m.Totals.Failed > 0 || m.Totals.DEKsMigrated != int64(deks) {
		return fmt.Errorf("run %s: %d migrated, %d failed", runID, m.Totals.DEKsMigrated, m.Totals.Failed)
	}
	res := map[string]any{"path": tag, "workers": workers, "deks": deks,
		"raw_deks_per_s": rawRate, "rekey_deks_per_s": float64(deks) / el.Seconds(), "rekey_seconds": el.Seconds(),
		"raw_cpu_profile": rawProf, "rekey_cpu_profile": rekeyProf}
	jb, _ := json.MarshalIndent(res, "", "  ")
	fmt.Println(string(jb))
	fmt.Fprintf(os.Stderr, "rekey's own CPU: go tool pprof -top -tagfocus=bench=rekey %s\n", rekeyProf)
	return nil
}
