package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"rekey/hsmio/softhsm"
)

// Throwaway PINs of the bench's own SoftHSM2 tokens (under --dir, never a
// real HSM). They reach rekey through the environment, as in production.
const (
	benchSourcePIN = "bench-source-1234"
	benchTargetPIN = "bench-target-5678"
	benchSOPIN     = "bench-so-0000"
)

func sourceKEK() string {
	return "pkcs11:token=source;object=kek-aes?pin-source=env:REKEY_SOURCE_PIN"
}

func targetKEK() string {
	return "pkcs11:token=target;object=kek-aes?pin-source=env:REKEY_TARGET_PIN"
}

// setupTokens creates (or reuses) the tokens "source" and "target" with an
// AES-256 KEK "kek-aes" each in dir, and points this process and its
// children at them. It must run before any key is opened in this process:
// SoftHSM2 reads SOFTHSM2_CONF once, when the module is initialized.
func setupTokens(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	conf, err := softhsm.Setup(abs)
	if err != nil {
		return err
	}
	os.Setenv("REKEY_SOURCE_PIN", benchSourcePIN)
	os.Setenv("REKEY_TARGET_PIN", benchTargetPIN)
	pins := map[string]string{"source": benchSourcePIN, "target": benchTargetPIN}
	for _, tok := range []string{"source", "target"} {
		if err := softhsm.InitToken(conf, tok, benchSOPIN, pins[tok]); err != nil {
			return err
		}
		if err := softhsm.CreateKey(tok, pins[tok], softhsm.KeySpec{Label: "kek-aes"}); err != nil {
			return fmt.Errorf("%v (delete %s to start over)", err, abs)
		}
	}
	return nil
}

// buildRekey builds the rekey CLI into the bench's own folder (never bin/,
// which other people's make targets use).
func buildRekey(ctx context.Context, dir string) (string, error) {
	out := filepath.Join(dir, "bin", "rekey")
	abs, err := filepath.Abs(out)
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, goTool(), "build", "-o", abs, "./jobs/rekey")
	cmd.Dir = moduleRoot()
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./jobs/rekey: %w (run rekey-bench from the rekey module, or set --rekey)", err)
	}
	return abs, nil
}

func goTool() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	return "go"
}

// moduleRoot is the folder of go.mod above the working directory.
func moduleRoot() string {
	d, _ := os.Getwd()
	for p := d; ; p = filepath.Dir(p) {
		if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
			return p
		}
		if filepath.Dir(p) == p {
			return d
		}
	}
}

// Machine describes where the figures were measured.
type Machine struct {
	CPU        string   `json:"cpu"`
	Cores      int      `json:"cores"`
	GOMAXPROCS int      `json:"gomaxprocs"`
	Kernel     string   `json:"kernel"`
	Go         string   `json:"go"`
	SoftHSM    string   `json:"softhsm"`
	Modules    []string `json:"modules"`
	MemTotal   string   `json:"mem_total"`
	LoadStart  string   `json:"loadavg_start"`
	LoadEnd    string   `json:"loadavg_end"`
	Started    string   `json:"started"`
}

func describeMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), Go: runtime.Version(), Started: time.Now().UTC().Format(time.RFC3339)}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		l, _, _ := strings.Cut(string(b), "\n")
		m.MemTotal = strings.TrimSpace(strings.TrimPrefix(l, "MemTotal:"))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	if out, err := exec.Command("softhsm2-util", "--version").Output(); err == nil {
		m.SoftHSM = strings.TrimSpace(string(out))
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			switch d.Path {
			case "github.com/apache/beam/sdks/v2", "github.com/parquet-go/parquet-go", "github.com/ThalesGroup/crypto11":
				m.Modules = append(m.Modules, d.Path+" "+d.Version)
			}
		}
	}
	m.LoadStart = loadAvg()
	return m
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// stamp makes dataset folders reusable across bench runs: a folder is
// reused only when its stamp file holds the same generator arguments.
func stampMatches(dir string, args []string) bool {
	b, err := os.ReadFile(filepath.Join(dir, ".bench-stamp"))
	if err != nil {
		return false
	}
	want, _ := json.Marshal(args)
	return bytes.Equal(b, want)
}

func writeStamp(dir string, args []string) error {
	b, _ := json.Marshal(args)
	return os.WriteFile(filepath.Join(dir, ".bench-stamp"), b, 0o644)
}
