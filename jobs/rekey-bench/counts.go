package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
)

// countRun runs `rekey-bench profile` (this binary) as a child: one
// in-process migration on the direct runner with every KEK call counted
// and a CPU profile written, and a `go tool pprof -top` of it saved beside
// the profile.
func countRun(ctx context.Context, c *config, mode, dsName string, logs string) (*profileResult, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{"profile", "--dir", c.Dir, "--mode", mode, "--dataset", dsName, "--target-wrap", c.TargetWrap,
		"--workers", strconv.Itoa(c.Workers)}
	res, err := runChild(ctx, self, args, filepath.Join(logs, "profile-"+mode+"-"+dsName+".log"))
	if err != nil {
		return nil, err
	}
	var pr profileResult
	if err := json.Unmarshal([]byte(res.Stdout), &pr); err != nil {
		return nil, fmt.Errorf("profile %s %s: %v", mode, dsName, err)
	}
	top := pr.CPUProfile[:len(pr.CPUProfile)-len(".cpu.pprof")] + ".top.txt"
	cmd := exec.CommandContext(ctx, goTool(), "tool", "pprof", "-top", "-nodecount=40", self, pr.CPUProfile)
	if out, err := cmd.Output(); err == nil {
		_ = os.WriteFile(top, out, 0o644)
	}
	return &pr, nil
}
