package local_test

import (
	"path/filepath"
	"testing"

	"rekey/providers/local"
	"rekey/providers/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, local.Backend{}, filepath.Join(t.TempDir(), "root"), storagetest.Config{})
}
