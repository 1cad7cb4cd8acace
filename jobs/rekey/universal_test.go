//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/metrics"
	jobpb "github.com/apache/beam/sdks/v2/go/pkg/beam/model/jobmanagement_v1"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/options/jobopts"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"rekey/pipeline"
	"rekey/schemas"
	"rekey/transforms/ledger"
)

// TestUniversalRunner submits a real migration to a Beam job service that
// runs as a separate process (the prism job server), then checks the result
// with rekey verify and rekey audit, both submitted the same way.
//
// prism listens on every interface and has no flag to choose one (Beam
// v2.77.0: --job_port, --web_port, --serve_http, --idle_shutdown_timeout,
// --jm_override, --log_*). So the test runs in a private network namespace
// whose only interface is its own loopback: the job service is reachable on
// 127.0.0.1 of that namespace and from nowhere else. The test re-executes
// itself inside the namespace (an unprivileged user namespace maps the
// current user to root there, which may bring lo up).
func TestUniversalRunner(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		runInPrivateNetwork(t)
		return
	}
	universalRun(t)
}

const (
	childEnv  = "REKEY_TEST_UNIVERSAL_CHILD"
	prismEnv  = "REKEY_TEST_PRISM"
	bootEnv   = "REKEY_TEST_BEAM_BOOT"
	workerEnv = "REKEY_TEST_WORKER_BINARY"
)

// missing skips for a missing dependency, or fails when CI is set.
func missing(t *testing.T, format string, a ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("missing dependency (CI is set, so this fails): "+format, a...)
	}
	t.Skipf("missing dependency: "+format, a...)
}

func runInPrivateNetwork(t *testing.T) {
	prism := beamBinary(t, "prism", "github.com/apache/beam/sdks/v2/go/cmd/prism")
	boot := beamBinary(t, "boot", "github.com/apache/beam/sdks/v2/go/container")
	worker := workerBinary(t)
	// The child times out before this test does, so its goroutine dump
	// reaches this test's output instead of being lost with it.
	timeout := 15 * time.Minute
	if d, ok := t.Deadline(); ok {
		timeout = time.Until(d) - 30*time.Second
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestUniversalRunner$", "-test.v", "-test.count=1", "-test.timeout="+timeout.String())
	cmd.Env = append(os.Environ(), childEnv+"=1", prismEnv+"="+prism, bootEnv+"="+boot, workerEnv+"="+worker)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:                 syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET,
		UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
		GidMappingsEnableSetgroups: false,
		Pdeathsig:                  syscall.SIGKILL,
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EACCES) {
			missing(t, "cannot create a user and network namespace to isolate the job service (%v); allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) or run as root", err)
		}
		t.Fatal(err)
	}
	err := cmd.Wait()
	log := out.String()
	if err != nil {
		t.Fatalf("the test inside the private network failed (%v):\n%s", err, log)
	}
	if !strings.Contains(log, "--- PASS: TestUniversalRunner") {
		t.Fatalf("the test inside the private network did not pass:\n%s", log)
	}
	t.Logf("inside the private network:\n%s", lastLines(log, 40))
}

// beamBinary builds a command of the Beam module rekey uses (the prism job
// server, the Go SDK container's boot loader), once per Beam version:
// cached in the user cache folder.
func beamBinary(t *testing.T, name, pkg string) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		missing(t, "the go command is needed to build %s: %v", pkg, err)
	}
	v, err := exec.Command(goTool, "list", "-m", "-f", "{{.Version}}", "github.com/apache/beam/sdks/v2").Output()
	if err != nil {
		t.Fatalf("go list the Beam module: %v", err)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "rekey-test")
	bin := filepath.Join(dir, fmt.Sprintf("%s-%s-%s-%s", name, strings.TrimSpace(string(v)), runtime.GOOS, runtime.GOARCH))
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := fmt.Sprintf("%s.tmp-%d", bin, os.Getpid())
	if out, err := exec.Command(goTool, "build", "-o", tmp, pkg).CombinedOutput(); err != nil {
		os.Remove(tmp)
		t.Fatalf("build %s: %v\n%s", pkg, err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

// workerBinary builds rekey from this source tree as a runner would get it
// from jobs/worker/build.sh: with cgo, for --worker_binary.
func workerBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "rekey-worker")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the worker binary: %v\n%s", err, out)
	}
	return bin
}

// universalRun is the test proper, inside the private network namespace.
func universalRun(t *testing.T) {
	if err := loopbackUp(); err != nil {
		t.Fatalf("bring up lo in the private network namespace: %v", err)
	}
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback == 0 {
			t.Fatalf("interface %s in the private namespace: the job service would not be loopback-only", i.Name)
		}
	}
	endpoint := startPrism(t, os.Getenv(prismEnv))

	root := t.TempDir()
	src, dst := filepath.Join(root, "src"), filepath.Join(root, "dst")
	srcKEK, dstKEK := env.KEK("source", "kek-aes"), env.KEK("target", "kek-rsa")
	const files, records = 3, 120
	rekey(t, exitOK, "gen", "--runner=direct", "--data", src+"/data", "--deks", src+"/deks", "--kek", srcKEK,
		"--files", fmt.Sprint(files), "--records", fmt.Sprint(records), "--num-deks", "6", "--record-size", "200")

	job := filepath.Join(root, "job.yaml")
	ledgerDir := filepath.Join(root, "ledger")
	jobYAML := fmt.Sprintf(`version: 1
mode: reencrypt
run_id: universal-1
source: {data: %q, deks: %q, kek: %q}
target: {data: %q, deks: %q, kek: %q, wrap: rsa-oaep-sha1}
ledger: %q
`, src+"/data", src+"/deks", srcKEK, dst+"/data", dst+"/deks", dstKEK, ledgerDir)
	if err := os.WriteFile(job, []byte(jobYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	remote := []string{"--runner=universal", "--endpoint=" + endpoint, "--environment_type=LOOPBACK", "--progress=-1s"}

	out := rekey(t, exitOK, append([]string{"run", "--job", job}, remote...)...)
	if !strings.Contains(out, "succeeded") {
		t.Fatalf("rekey run printed no successful summary:\n%s", out)
	}
	b, err := os.ReadFile(ledger.ManifestPath(ledgerDir, "universal-1"))
	if err != nil {
		t.Fatal(err)
	}
	var m schemas.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m.Totals.RecordsMigrated != files*records || m.Totals.DEKsMigrated != 6 || m.Totals.Failed != 0 {
		t.Fatalf("manifest totals %+v, want %d records and 6 DEKs migrated", m.Totals, files*records)
	}

	out = rekey(t, exitOK, append([]string{"verify", "--job", job}, remote...)...)
	if !strings.Contains(out, fmt.Sprintf("%d decrypt, 0 fail", files*records)) || !strings.Contains(out, "counts match run universal-1") {
		t.Fatalf("rekey verify did not confirm the migration:\n%s", out)
	}

	// The retirement check: the migrated data no longer needs the source
	// KEK; the source data still does.
	out = rekey(t, exitOK, append([]string{"audit", "--job", job}, remote...)...)
	if !strings.Contains(out, "CLEAR") {
		t.Fatalf("rekey audit after the migration:\n%s", out)
	}
	out = rekey(t, exitFailures, append([]string{"audit", "--kek", "pkcs11:token=source;object=kek-aes",
		"--deks", src + "/deks", "--data", src + "/data", "--report", filepath.Join(root, "audit-src.json")}, remote...)...)
	if !strings.Contains(out, fmt.Sprintf("%d records in %d files use those DEKs", files*records, files)) {
		t.Fatalf("rekey audit of the source data:\n%s", out)
	}

	// The remote-worker path: the job service starts worker processes
	// through Beam's Go boot loader, which fetches the staged cgo worker
	// binary (--worker_binary) and runs it with --worker: what a Flink or
	// Dataflow worker does inside the worker container.
	boot := filepath.Join(root, "boot.sh")
	// prism v2.77.0 passes --id='ID' to PROCESS workers with literal quotes,
	// which the boot loader then cannot find in its worker pool; the wrapper
	// strips them.
	script := strings.ReplaceAll(bootShim, "BOOT", os.Getenv(bootEnv))
	script = strings.ReplaceAll(script, "SEMI", filepath.Join(root, "semi"))
	// The boot loader copies the worker binary to a new /tmp/bin*/worker
	// for every worker it starts and never removes it (it expects a
	// throwaway container): 226 MB left in /tmp by every run of this test.
	before := workerCopies()
	t.Cleanup(func() {
		for d := range workerCopies() {
			if !before[d] {
				_ = os.RemoveAll(d)
			}
		}
	})
	if err := os.WriteFile(boot, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	rewrapJob := filepath.Join(root, "rewrap.yaml")
	rewrapYAML := fmt.Sprintf(`version: 1
mode: rewrap
run_id: universal-2
source: {deks: %q, kek: %q}
target: {deks: %q, kek: %q, wrap: aes-kwp}
ledger: %q
`, src+"/deks", srcKEK, root+"/rewrapped/deks", env.KEK("target", "kek-aes"), ledgerDir)
	if err := os.WriteFile(rewrapJob, []byte(rewrapYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	out = rekey(t, exitOK, "run", "--job", rewrapJob, "--runner=universal", "--endpoint="+endpoint, "--progress=-1s",
		"--environment_type=PROCESS", `--environment_config={"command":"`+boot+`"}`, "--worker_binary="+os.Getenv(workerEnv))
	if !strings.Contains(out, "succeeded") {
		t.Fatalf("rekey run with PROCESS workers:\n%s", out)
	}
	out = rekey(t, exitOK, append([]string{"verify", "--job", rewrapJob}, remote...)...)
	if !strings.Contains(out, "6 unwrap, 0 fail") || !strings.Contains(out, "counts match run universal-2") {
		t.Fatalf("rekey verify of the rewrap done by PROCESS workers:\n%s", out)
	}

	// And the work really went through the job service: six jobs, done.
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	jobs, err := jobpb.NewJobServiceClient(conn).GetJobs(context.Background(), &jobpb.GetJobsRequest{})
	if err != nil {
		t.Fatalf("ask the job service for its jobs: %v", err)
	}
	done := 0
	for _, j := range jobs.GetJobInfo() {
		if j.GetState() == jobpb.JobState_DONE {
			done++
		}
	}
	if done != 6 {
		t.Fatalf("the job service ran %d jobs to DONE, want 6 (two runs, two verifies, two audits): %v", done, jobs.GetJobInfo())
	}
}

// bootShim runs Beam's boot loader with prism's --id='ID' unquoted, and
// its staging folder in the test's (SEMI) instead of /tmp/staged.
const bootShim = `#!/bin/sh
for a do
  shift
  case "$a" in
    --id=\'*\') a="--id=$(printf '%s' "${a#--id=}" | sed "s/^'//; s/'\$//")" ;;
  esac
  set -- "$@" "$a"
done
exec BOOT "$@" --semi_persist_dir=SEMI
`

// workerCopies lists the folders holding a copy of a worker binary made by
// Beam's boot loader (/tmp/bin*/worker; the loader's path is fixed).
func workerCopies() map[string]bool {
	m := map[string]bool{}
	ds, _ := filepath.Glob("/tmp/bin*")
	for _, d := range ds {
		if fi, err := os.Stat(filepath.Join(d, "worker")); err == nil && fi.Mode().IsRegular() {
			m[d] = true
		}
	}
	return m
}

// startPrism starts the job server as a separate process on a free port
// and waits until it accepts connections on 127.0.0.1.
func startPrism(t *testing.T, bin string) string {
	t.Helper()
	if bin == "" {
		t.Fatalf("%s not set: the parent test builds prism", prismEnv)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	var log bytes.Buffer
	cmd := exec.Command(bin, fmt.Sprintf("--job_port=%d", port), "--serve_http=false", "--log_level=warn")
	cmd.Stdout, cmd.Stderr = &log, &log
	// PROCESS workers run in prism's folder; Beam's boot loader writes
	// pipeline_options.json there.
	cmd.Dir = t.TempDir()
	// Its own process group, so the worker processes it starts (PROCESS
	// environment) end with it; and a bounded wait for its output pipe,
	// which those workers share.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start prism: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if t.Failed() {
			t.Logf("prism's log:\n%s", lastLines(log.String(), 60))
		}
	})
	endpoint := fmt.Sprintf("127.0.0.1:%d", port)
	// A readiness guard, not a performance check: prism normally listens
	// within a second.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		c, err := net.Dial("tcp", endpoint)
		if err == nil {
			c.Close()
			return endpoint
		}
		select {
		case err := <-exited:
			t.Fatalf("prism exited before listening (%v):\n%s", err, log.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("prism did not listen on %s:\n%s", endpoint, log.String())
		}
	}
}

// rekey runs the CLI in this process and checks its exit code.
func rekey(t *testing.T, wantCode int, args ...string) string {
	t.Helper()
	resetFlags()
	var stdout, stderr bytes.Buffer
	code := mainExit(args, &stdout, &stderr)
	if code != wantCode {
		t.Fatalf("rekey %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, wantCode, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// loopbackUp sets IFF_UP on lo (a new network namespace starts with it
// down), with the SIOCSIFFLAGS ioctl.
func loopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var ifr [40]byte // struct ifreq: char ifr_name[16]; short ifr_flags; ...
	copy(ifr[:], "lo")
	flags := (*uint16)(unsafe.Pointer(&ifr[syscall.IFNAMSIZ]))
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCGIFFLAGS, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		return e
	}
	*flags |= syscall.IFF_UP | syscall.IFF_RUNNING
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCSIFFLAGS, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		return e
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func TestRemoteWorkerChecks(t *testing.T) {
	runner, envType := *runners.Runner, *jobopts.EnvironmentType
	t.Cleanup(func() { *runners.Runner, *jobopts.EnvironmentType = runner, envType })

	job := &pipeline.Job{Source: pipeline.Side{Data: "/shared/src", DEKs: "s3://b/deks"}, Target: pipeline.Side{DEKs: "oss://b/new"}, Ledger: "ledger"}
	for _, tc := range []struct {
		runner, env string
		remote      bool
	}{
		{"direct", "", false}, {"prism", "", false}, {"universal", "LOOPBACK", false},
		{"universal", "DOCKER", true}, {"flink", "EXTERNAL", true}, {"dataflow", "", true},
	} {
		*runners.Runner, *jobopts.EnvironmentType = tc.runner, tc.env
		if got := remoteWorkers(); got != tc.remote {
			t.Errorf("runner %s, environment %q: remoteWorkers() = %v, want %v", tc.runner, tc.env, got, tc.remote)
		}
	}
	*runners.Runner = "flink"
	if err := checkSharedLocations(job); err == nil || !strings.Contains(err.Error(), `ledger: "ledger" is a relative path`) {
		t.Fatalf("relative ledger with remote workers: %v", err)
	}
	job.Ledger = "s3://b/ledger"
	if err := checkSharedLocations(job); err != nil {
		t.Fatalf("absolute and object-store locations: %v", err)
	}

	var out bytes.Buffer
	printRunnerMetrics(&out, fakeResult{*metrics.NewResults([]metrics.CounterResult{
		{Committed: 3, Key: metrics.StepKey{Step: "a", Name: "files", Namespace: "rekey"}},
		{Committed: 2, Key: metrics.StepKey{Step: "b", Name: "files", Namespace: "rekey"}},
		{Attempted: 700, Key: metrics.StepKey{Step: "b", Name: "records", Namespace: "rekey"}},
		{Committed: 9, Key: metrics.StepKey{Step: "b", Name: "records", Namespace: "other"}},
	}, nil, nil, nil, nil)})
	if want := "files 5, deks 0, records 700, bytes 0, failed 0"; !strings.Contains(out.String(), want) {
		t.Fatalf("printRunnerMetrics printed %q, want it to contain %q", out.String(), want)
	}
}

type fakeResult struct{ m metrics.Results }

func (r fakeResult) Metrics() metrics.Results { return r.m }
func (r fakeResult) JobID() string            { return "fake" }
