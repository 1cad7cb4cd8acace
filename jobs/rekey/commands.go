package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/options/jobopts"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners"
	_ "github.com/apache/beam/sdks/v2/go/pkg/beam/runners/direct"
	_ "github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism"

	"rekey/hsmio"
	"rekey/pipeline"
	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// signals watches SIGINT and SIGTERM for a run: the first calls first and
// is remembered; the second exits the process at once.
type signals struct {
	ch  chan os.Signal
	got atomic.Pointer[os.Signal]
}

func watchSignals(stderr io.Writer, what string, first func()) *signals {
	s := &signals{ch: make(chan os.Signal, 2)}
	signal.Notify(s.ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig, ok := <-s.ch
		if !ok {
			return
		}
		s.got.Store(&sig)
		fmt.Fprintf(stderr, "\n%s: %v received: stopping; units in flight commit or are dropped at their next batch (send it again to stop at once)\n", what, sig)
		first()
		again, ok := <-s.ch
		if !ok {
			return
		}
		fmt.Fprintf(stderr, "%s: %v received again: stopping now. Committed units are kept and no partial file has a final name; finish with --resume\n", what, again)
		// Not in the middle of a token login: SoftHSM2 rewrites its token
		// file then, and an exit halfway would leave the token empty.
		_, _ = hsmio.LoginsSettled(5 * time.Second)
		os.Exit(signalCode(again))
	}()
	return s
}

// received is the first signal, or nil.
func (s *signals) received() os.Signal {
	if p := s.got.Load(); p != nil {
		return *p
	}
	return nil
}

func (s *signals) stop() {
	signal.Stop(s.ch)
	close(s.ch)
}

// signalCode is the exit code of a run stopped by sig: 128 + its number,
// as shells report it (130 for SIGINT, 143 for SIGTERM).
func signalCode(sig os.Signal) int {
	if n, ok := sig.(syscall.Signal); ok {
		return 128 + int(n)
	}
	return 128 + int(syscall.SIGINT)
}

// loadJobCommand is the start of every command that runs a job: rekey's
// and Beam's flags, the job file with the flags over it, validation.
func loadJobCommand(cmd, synopsis string, args []string, stdout io.Writer) (*jobFlags, *pipeline.Job, error) {
	f := &jobFlags{}
	f.register(false)
	set, err := parseFlags(cmd, synopsis, args, stdout)
	if err != nil {
		return nil, nil, err
	}
	f.set = set
	quietBeam(f.verbose)
	j, err := f.load()
	if err != nil {
		return nil, nil, err
	}
	if err := j.Validate(); err != nil {
		return nil, nil, withCode(exitUsage, err)
	}
	return f, j, nil
}

func cmdPlan(args []string, stdout, stderr io.Writer) error {
	_, j, err := loadJobCommand("plan", "Dry run: counts files, records and DEKs, lists the KEKs referenced, checks both\nKEKs (module, token, PIN, key, permissions, a test unwrap and a wrap/unwrap round trip),\nchecks that the output is not inside the source, and estimates HSM operations.\nCounts the failures its findings predict (DEKs of another KEK and the records under them,\nunreadable files, missing columns) and compares them with max_failures.\nTouches no data. Exit 0 if every check passed and max_failures accepts the predicted\nfailures, 4 otherwise.", args, stdout)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	r := pipeline.Plan(ctx, j, true)
	printReport(stdout, j, r)
	if r.Failed() {
		return withCode(exitPreflight, errors.New("preflight checks failed (marked FAIL above); nothing was touched"))
	}
	return nil
}

func printReport(w io.Writer, j *pipeline.Job, r *pipeline.Report) {
	fmt.Fprintf(w, "rekey plan: run %s, mode %s\n\n", j.RunID, j.Mode)
	for _, c := range r.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		} else if c.Warn {
			mark = "warn"
		}
		fmt.Fprintf(w, "  [%s] %s: %s\n", mark, c.Name, c.Info)
	}
	fmt.Fprintf(w, "\n  DEKs:          %d in %s\n", r.DEKs, plural(int64(r.DEKFiles), "file"))
	for k, n := range r.KEKs {
		fmt.Fprintf(w, "  KEK referenced: %s (%d DEKs)\n", k, n)
	}
	if j.Mode == schemas.ModeReencrypt {
		fmt.Fprintf(w, "  record files:  %d (%d records, %s)\n", r.DataFiles, r.Records, humanBytes(r.DataBytes))
	}
	fmt.Fprintf(w, "  HSM operations: about %d (%s)\n", r.HSMOps, r.HSMOpsNote)
	if p := r.Predicted; p.Total() > 0 {
		budget := "max_failures=" + j.MaxFailures
		if j.MaxFailures == "" {
			budget = "max_failures not set"
		}
		records := fmt.Sprintf("%d records", p.Records)
		if j.Mode != schemas.ModeReencrypt {
			records = "no records (rewrap)"
		} else if !p.RecordsCounted && p.DEKs() > 0 {
			records = "the records under those DEKs (not counted)"
		}
		fmt.Fprintf(w, "  predicted failures: %d DEKs, %s, %d files (%s)\n", p.DEKs(), records, p.BadFiles+p.NoColumn, budget)
	}
}

func cmdRun(args []string, stdout, stderr io.Writer) error {
	f, j, err := loadJobCommand("run", "Migrates a dataset: mode rewrap rewraps every DEK (data untouched); mode reencrypt\ndecrypts every encrypted cell and encrypts it under a fresh DEK, verifying each new\nciphertext before its file is committed. Writes the ledger and a manifest.\nExit 0 all migrated, 3 finished with failures (see the ledger), 1 fatal, 4 preflight failed.", args, stdout)
	if err != nil {
		return err
	}
	if *jobopts.Async {
		return withCode(exitUsage, errors.New("--async is not supported: rekey run waits for the job, reads its manifest and sets its exit code from it (schedule the launcher instead)"))
	}
	if remoteWorkers() {
		if err := checkSharedLocations(j); err != nil {
			return withCode(exitUsage, err)
		}
	}
	// A first SIGINT/SIGTERM stops the run cleanly: before the pipeline
	// starts, nothing is touched; after, no unit starts, units in flight
	// stop at their next batch or commit, the manifest says interrupted.
	// A second one exits at once (pending files never get final names).
	transforms.ResetStop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var started atomic.Bool
	sigs := watchSignals(stderr, "rekey run "+j.RunID, func() {
		transforms.Interrupt()
		if !started.Load() || remoteWorkers() {
			cancel() // the preflight, or a remote runner's job
		}
	})
	defer sigs.stop()
	// The run owns its run id and everything it writes until it ends,
	// from before its preflight: a second run is refused naming the
	// holder, not by the first run's half-written output.
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	lease, err := pipeline.AcquireLease(ctx, j, f.leaseTTL, func(err error) {
		fmt.Fprintf(stderr, "rekey run %s: %v; stopping\n", j.RunID, err)
		stopRun()
	})
	if err != nil {
		if errors.Is(err, pipeline.ErrLeaseHeld) {
			return withCode(exitPreflight, fmt.Errorf("%v; nothing was touched", err))
		}
		// Nothing was touched, and retrying will not help until the store
		// allows exclusive creates (or the foreign lease file is gone).
		return withCode(exitPreflight, fmt.Errorf("take the run's lease: %v; nothing was touched", err))
	}
	defer lease.Release(context.WithoutCancel(ctx))
	// Preflight: the same checks as plan, without the per-file footer scan.
	r := pipeline.Plan(ctx, j, false)
	if sig := sigs.received(); sig != nil {
		return withCode(signalCode(sig), fmt.Errorf("run %s interrupted by %v during its preflight; nothing was touched", j.RunID, sig))
	}
	if r.Failed() {
		for _, c := range r.Checks {
			if !c.OK {
				fmt.Fprintf(stderr, "  [FAIL] %s: %s\n", c.Name, c.Info)
			}
		}
		return withCode(exitPreflight, errors.New("preflight checks failed; nothing was touched (run rekey plan for the full report)"))
	}
	for _, c := range r.Checks {
		if c.Warn {
			fmt.Fprintf(stderr, "  [warn] %s: %s\n", c.Name, c.Info)
		}
	}
	if err := j.Resolve(ctx); err != nil {
		return withCode(exitPreflight, fmt.Errorf("%v; nothing was touched", err))
	}
	if _, err := pipeline.CheckRunDefinition(ctx, j); err != nil {
		if errors.Is(err, pipeline.ErrJobChanged) {
			return withCode(exitUsage, err)
		}
		return withCode(exitFatal, err)
	}
	// Pending files of killed runs (never under a final name) are removed
	// now that this run holds the target's lease: no live writer is there.
	removed := 0
	for _, root := range []string{j.Target.Data, j.Target.DEKs, ledger.RunDir(j.Ledger, j.RunID)} {
		if root == "" {
			continue
		}
		n, err := storage.CleanTemps(ctx, root)
		if err != nil {
			fmt.Fprintf(stderr, "  [warn] temporaries of killed runs under %s: %v (they are harmless: hidden, never read)\n", root, err)
		}
		removed += n
	}
	if removed > 0 {
		fmt.Fprintf(stderr, "rekey run %s: removed %d temporary files left by killed runs\n", j.RunID, removed)
	}
	// A _SUCCESS left by an earlier run must not vouch for this one.
	for _, dir := range successDirs(j) {
		if err := storage.Remove(ctx, storage.Join(dir, "_SUCCESS")); err != nil {
			return withCode(exitPreflight, fmt.Errorf("remove the stale _SUCCESS marker of %s before the run: %v; nothing else was touched", dir, err))
		}
	}
	spec := j.Spec()
	work := plural(int64(r.DEKs), "DEK")
	switch {
	case spec.Objects():
		work = plural(int64(r.DataFiles), "object")
	case spec.CellKeys() && r.RecordsAll:
		work = fmt.Sprintf("%s (a DEK in every cell)", plural(r.Records, "record"))
	case spec.CellKeys():
		work = fmt.Sprintf("%s (a DEK in every cell)", plural(int64(r.DataFiles), "record file"))
	}
	fmt.Fprintf(stderr, "rekey run %s: %s, %s, runner %s, ledger %s\n", j.RunID, j.Mode, work, *runners.Runner, ledger.RunDir(j.Ledger, j.RunID))
	p, s := beam.NewPipelineWithRoot()
	pipeline.Build(s, spec)
	start := time.Now()
	progress := f.progress
	if remoteWorkers() && progress >= 0 {
		fmt.Fprintf(stderr, "  progress: the workers run on %s; watch its UI (Beam counters rekey/files, deks, records, bytes, failed)\n", *runners.Runner)
		progress = -1
	}
	stop := startProgress(stderr, progress, j.Mode, runTotals(runCtx, j, &spec, r, progress >= 0))
	started.Store(true)
	if sigs.received() != nil {
		transforms.Interrupt() // a signal during the preflight's last moments
	}
	res, runErr := beam.Run(runCtx, *runners.Runner, p)
	stop()
	if lost := lease.Confirm(context.WithoutCancel(ctx)); lost != nil {
		return withCode(exitFatal, fmt.Errorf("run %s: %v\nAnother run may have written the same target: check it with rekey verify before trusting it, and finish with --resume", j.RunID, lost))
	}
	if sig := sigs.received(); sig != nil && runErr != nil {
		m, err := transforms.WriteInterruptedManifest(context.WithoutCancel(ctx), spec)
		if err != nil {
			return withCode(signalCode(sig), fmt.Errorf("run %s interrupted by %v; its manifest could not be written (%v). Committed units are kept: finish with --run-id %s --resume", j.RunID, sig, err, j.RunID))
		}
		printSummary(stdout, &m, time.Since(start))
		done := fmt.Sprintf("%d DEKs and %d records", m.Totals.DEKsMigrated, m.Totals.RecordsMigrated)
		if m.Totals.Objects > 0 {
			done = plural(m.Totals.ObjectsMigrated, "object")
		}
		return withCode(signalCode(sig), fmt.Errorf("run %s interrupted by %v: %s committed, the rest not started or dropped (no partial file has a final name).\nTo finish it: rekey run <the same job> --run-id %s --resume", j.RunID, sig, done, j.RunID))
	}
	if sig := sigs.received(); sig != nil {
		fmt.Fprintf(stderr, "rekey run %s: %v received, but every unit had already been done: the run finished\n", j.RunID, sig)
	}
	if runErr != nil {
		if strings.Contains(runErr.Error(), transforms.ErrFailureBudget.Error()) {
			return withCode(exitFailures, fmt.Errorf("run %s stopped: %s", j.RunID, budgetMessage(runErr)))
		}
		cause := transforms.StopCause()
		if cause == "" {
			cause = cleanBeamErr(runErr) // a remote runner: the cause is in its workers
		}
		if f.verbose {
			fmt.Fprintf(stderr, "rekey run %s: the runner's error: %v\n", j.RunID, runErr)
		}
		return withCode(exitFatal, fmt.Errorf("run %s stopped: %s\nCommitted units are kept: fix the cause and re-run with --run-id %s --resume", j.RunID, oneLine(cause), j.RunID))
	}
	m, err := readManifest(ctx, j.Ledger, j.RunID)
	if err != nil {
		if remoteWorkers() {
			printRunnerMetrics(stderr, res)
			return withCode(exitFatal, fmt.Errorf("run %s finished on %s, but its manifest %s cannot be read from this machine (%v), so the outcome is unknown: put the ledger on storage this machine and the workers share, then check the run with rekey ledger / rekey verify", j.RunID, *runners.Runner, ledger.ManifestPath(j.Ledger, j.RunID), err))
		}
		return withCode(exitFatal, err)
	}
	printSummary(stdout, m, time.Since(start))
	if m.Totals.Failed == 0 && m.Status == "succeeded" && j.WantsSuccessMarker() {
		for _, dir := range successDirs(j) {
			if err := storage.Put(ctx, storage.Join(dir, "_SUCCESS"), nil); err != nil {
				return withCode(exitFatal, fmt.Errorf("run %s succeeded, but its _SUCCESS marker could not be written to %s: %v (downstream jobs waiting for it will not start; the data and ledger are complete)", j.RunID, dir, err))
			}
		}
	}
	if m.Totals.Failed > 0 {
		return withCode(exitFailures, fmt.Errorf("%d failed (ledger rows with status failed); the first: %s\nTo finish the run: fix the cause, then re-run with --run-id %s --resume (failed units are tried again; see docs/OPERATIONS.md \"How to finish a run\")", m.Totals.Failed, firstFailure(m.Failures), j.RunID))
	}
	return nil
}

// oneLine keeps the first line of a cause, capped, so a stop prints as one
// line however the error was built.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 1000 {
		s = s[:1000] + "..."
	}
	return s
}

// successDirs are the target folders a successful run marks with
// _SUCCESS: the records and the DEK table it wrote.
func successDirs(j *pipeline.Job) []string {
	var out []string
	for _, d := range []string{j.Target.Data, j.Target.DEKs} {
		if d != "" && (j.Mode == schemas.ModeReencrypt || d != j.Source.Data) {
			out = append(out, d)
		}
	}
	return out
}

func budgetMessage(err error) string {
	msg := err.Error()
	i := strings.Index(msg, transforms.ErrFailureBudget.Error())
	msg = msg[i:]
	if j := strings.IndexByte(msg, '\n'); j > 0 {
		msg = msg[:j]
	}
	return msg
}

func firstFailure(f []schemas.FailureNote) string {
	if len(f) == 0 {
		return "(none recorded)"
	}
	s := f[0].Source
	if f[0].RecordID != "" {
		s += " record " + f[0].RecordID
	} else if f[0].DEKID != "" {
		s += " dek " + f[0].DEKID
	}
	return s + ": " + f[0].Error
}

// cleanBeamErr keeps the root cause of a pipeline failure readable: Beam
// wraps DoFn errors in several layers of context.
func cleanBeamErr(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "(rekey stops:"); i >= 0 {
		// An output that cannot be written: its line says what and where.
		start := strings.LastIndex(msg[:i], "\n") + 1
		line := msg[start:]
		if j := strings.IndexByte(line, '\n'); j > 0 {
			line = line[:j]
		}
		if k := strings.Index(line, "write "); k >= 0 {
			line = line[k:]
		}
		return strings.TrimSpace(line)
	}
	// A DoFn's own error follows Beam's "DoFn[...] failed:" line.
	if i := strings.LastIndex(msg, "] failed:\n"); i >= 0 {
		for _, l := range strings.Split(msg[i+len("] failed:\n"):], "\n") {
			if l = strings.TrimSpace(l); l != "" {
				return l
			}
		}
	}
	for _, marker := range []string{"source KEK: ", "target KEK: ", "KEK: "} {
		if i := strings.LastIndex(msg, marker); i >= 0 {
			tail := msg[i:]
			if j := strings.IndexByte(tail, '\n'); j > 0 {
				tail = tail[:j]
			}
			return tail
		}
	}
	lines := strings.Split(msg, "\n")
	for _, l := range lines {
		if strings.Contains(l, "rekey") || strings.Contains(l, "unwrap") || strings.Contains(l, "wrap") {
			return strings.TrimSpace(l)
		}
	}
	if len(lines) > 6 {
		lines = lines[:6]
	}
	return strings.Join(lines, "\n")
}

func readManifest(ctx context.Context, root, runID string) (*schemas.Manifest, error) {
	return ledger.ReadManifest(ctx, root, runID)
}

func printSummary(w io.Writer, m *schemas.Manifest, took time.Duration) {
	t := m.Totals
	fmt.Fprintf(w, "\nrekey run %s (%s): %s in %s\n", m.RunID, m.Mode, m.Status, took.Round(time.Millisecond))
	fmt.Fprintf(w, "  %-8s %12s %12s %10s %10s\n", "", "total", "migrated", "skipped", "failed")
	if t.Objects > 0 {
		// An object job: its units are objects.
		fmt.Fprintf(w, "  %-8s %12d %12d %10d %10d\n", "objects", t.Objects, t.ObjectsMigrated, t.ObjectsSkipped, t.ObjectsFailed)
		if secs := took.Seconds(); secs > 0 {
			fmt.Fprintf(w, "  %.0f objects/s, %s of objects\n", float64(t.Objects)/secs, humanBytes(t.Bytes))
		}
		return
	}
	fmt.Fprintf(w, "  %-8s %12d %12d %10d %10d\n", "DEKs", t.DEKs, t.DEKsMigrated, t.DEKsSkipped, t.DEKsFailed)
	if m.Mode == schemas.ModeReencrypt {
		fmt.Fprintf(w, "  %-8s %12d %12d %10s %10d\n", "records", t.Records, t.RecordsMigrated, "-", t.RecordsFailed)
	}
	// A reencrypt's record files and its DEK table files are units alike;
	// "files" counts the record files, as the plan does, and the DEK table
	// gets a line of its own. (A rewrap's files are its DEK table files.)
	files := t.Files
	if m.Mode == schemas.ModeReencrypt {
		files -= t.DEKTableFiles
	}
	fmt.Fprintf(w, "  %-8s %12d %12d %10d %10d\n", "files", files, files-t.FilesFailed-t.FilesSkipped, t.FilesSkipped, t.FilesFailed)
	if m.Mode == schemas.ModeReencrypt && t.DEKTableFiles > 0 {
		fmt.Fprintf(w, "  DEK table: %s\n", plural(t.DEKTableFiles, "file"))
	}
	secs := took.Seconds()
	if secs > 0 {
		if m.Mode == schemas.ModeReencrypt {
			fmt.Fprintf(w, "  written: %s of ciphertext, %.0f records/s, %s/s\n", humanBytes(t.Bytes), float64(t.Records)/secs, humanBytes(int64(float64(t.Bytes)/secs)))
		} else {
			fmt.Fprintf(w, "  %.0f DEKs/s\n", float64(t.DEKs)/secs)
		}
	}
	fmt.Fprintf(w, "  ledger:   %s (%d rows)\n  manifest: %s\n", m.LedgerDir, t.LedgerRows, m.LedgerDir+"/_manifest.json")
	if len(m.Failures) > 0 {
		fmt.Fprintf(w, "  first failures:\n")
		for i, f := range m.Failures {
			if i == 5 {
				break
			}
			fmt.Fprintf(w, "    %s\n", firstFailure([]schemas.FailureNote{f}))
		}
	}
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// startProgress prints a progress line at an interval until stop is called.
// progressTotals are what the plan counted, for done/total, percent and
// ETA in the progress line (0: not known).
type progressTotals struct {
	Files, DEKs, Records int64
}

// runTotals are the totals of a run's progress line from its preflight:
// the files its stages count (record files, or DEK table files for a
// rewrap of a DEK table), the DEKs, and the records only when the
// preflight read every record file's footer (else it counted the first
// file alone, which is no total).
//
// When the preflight did not count the records and count is set, they are
// counted in the background while the run starts (footers only, a few at
// a time): the totals gain them when that is done.
func runTotals(ctx context.Context, j *pipeline.Job, spec *transforms.Spec, r *pipeline.Report, count bool) func() progressTotals {
	t := progressTotals{Files: int64(r.DataFiles), DEKs: int64(r.DEKs)}
	if j.Mode == schemas.ModeRewrap && !spec.ColumnKeys() {
		t.Files = int64(r.DEKFiles)
	}
	perRecord := int64(len(j.Columns.Encrypted)) // DEKs per record when they are in the cells
	if r.RecordsAll {
		t.Records = r.Records
		return func() progressTotals { return t }
	}
	if spec.CellKeys() {
		t.DEKs = 0 // one per cell: known once the records are
	}
	if !count || spec.Objects() || j.Mode == schemas.ModeRewrap && !spec.ColumnKeys() {
		return func() progressTotals { return t }
	}
	var records atomic.Int64
	go func() {
		if n, err := pipeline.CountRecords(ctx, j); err == nil {
			records.Store(n)
		}
	}()
	return func() progressTotals {
		c := t
		if n := records.Load(); n > 0 {
			c.Records = n
			if spec.CellKeys() {
				c.DEKs = n * perRecord
			}
		}
		return c
	}
}

// noTotals is for progress lines without a plan (verify, audit).
func noTotals() progressTotals { return progressTotals{} }

func startProgress(w io.Writer, every time.Duration, mode string, total func() progressTotals) (stop func()) {
	if every < 0 {
		return func() {}
	}
	tty := false
	if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		tty = w == io.Writer(os.Stderr)
	}
	if every == 0 {
		every = 10 * time.Second
		if tty {
			every = 2 * time.Second
		}
	}
	done, finished := make(chan struct{}), make(chan struct{})
	start := time.Now()
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				p := &transforms.Progress
				fmt.Fprintln(w, progressLine(time.Since(start), mode, total(), p.Files.Load(), p.DEKs.Load(), p.Records.Load(), p.Bytes.Load(), p.Failed.Load(), tty))
			}
		}
	}()
	// stop returns once no progress line is being written, so that the
	// caller's next lines (and a test reading w) do not race it.
	return func() { close(done); <-finished }
}

// progressLine is one progress report: done/total of each unit whose total
// the plan knows, the share done (DEKs for a rewrap, records or else files
// for a reencrypt), the rate and the time left; on a terminal a bar too.
func progressLine(el time.Duration, mode string, total progressTotals, files, deks, records, bytes, failed int64, bar bool) string {
	of := func(n, t int64) string {
		if t > 0 {
			return fmt.Sprintf("%d/%d", n, t)
		}
		return fmt.Sprint(n)
	}
	frac := -1.0
	switch {
	case mode == schemas.ModeRewrap && total.DEKs > 0:
		frac = float64(deks) / float64(total.DEKs)
	case total.Records > 0:
		frac = float64(records) / float64(total.Records)
	case total.Files > 0:
		frac = float64(files) / float64(total.Files)
	}
	secs := max(el.Seconds(), 0.001)
	line := fmt.Sprintf("  [%4.0fs] files %s  DEKs %s  records %s (%.0f/s)  %s  failed %d", el.Seconds(), of(files, total.Files), of(deks, total.DEKs),
		of(records, total.Records), float64(records)/secs, humanBytes(bytes), failed)
	if mode == schemas.ModeRewrap {
		line = fmt.Sprintf("  [%4.0fs] files %s  DEKs %s (%.0f/s)  failed %d", el.Seconds(), of(files, total.Files), of(deks, total.DEKs), float64(deks)/secs, failed)
	}
	if frac < 0 {
		return line
	}
	frac = min(frac, 1)
	line += fmt.Sprintf("  %3.0f%%", frac*100)
	if frac > 0 && frac < 1 {
		left := time.Duration(float64(el) * (1 - frac) / frac).Round(time.Second)
		line += "  ETA " + left.String()
	}
	if bar {
		n := int(frac * 20)
		line += "  [" + strings.Repeat("#", n) + strings.Repeat(".", 20-n) + "]"
	}
	return line
}

// isLocalRunner reports runners whose workers are this process.
func isLocalRunner() bool {
	switch *runners.Runner {
	case "direct", "prism", "":
		return true
	}
	return false
}

// plural is "1 file", "2 files".
func plural(n int64, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
