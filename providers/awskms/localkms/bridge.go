//go:build linux

package localkms

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// The bridge: Start runs the current binary again in a private network
// namespace with these variables set, and init turns it into a process
// that runs local-kms on that namespace's loopback and forwards a unix
// socket (which crosses namespaces) to it.
const (
	bridgeEnv = "REKEY_LOCALKMS_BRIDGE"
	binEnv    = "REKEY_LOCALKMS_BIN"
	sockEnv   = "REKEY_LOCALKMS_SOCK"
	// kmsPort is local-kms's port inside the namespace: nothing else
	// listens there.
	kmsPort = "8080"
)

func init() {
	if os.Getenv(bridgeEnv) == "" {
		return
	}
	if err := bridge(); err != nil {
		fmt.Fprintf(os.Stderr, "localkms bridge: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func bridge() error {
	if err := loopbackUp(); err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return err
	}
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback == 0 {
			return fmt.Errorf("interface %s in the private namespace: local-kms would not be loopback-only", i.Name)
		}
	}
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "REKEY_LOCALKMS_") && !strings.HasPrefix(e, "PORT=") {
			env = append(env, e)
		}
	}
	kms := exec.Command(os.Getenv(binEnv))
	kms.Env = append(env, "PORT="+kmsPort)
	kms.Stdout, kms.Stderr = os.Stderr, os.Stderr
	kms.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := kms.Start(); err != nil {
		return err
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = kms.Wait(); close(exited) }()
	defer func() { _ = kms.Process.Kill(); <-exited }()
	addr := net.JoinHostPort("127.0.0.1", kmsPort)
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			return fmt.Errorf("local-kms exited: %v", waitErr)
		default:
		}
		if i == 400 {
			return fmt.Errorf("local-kms did not listen on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	l, err := net.Listen("unix", os.Getenv(sockEnv))
	if err != nil {
		return err
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go forward(c, addr)
		}
	}()
	fmt.Println("ready")
	// The test closes stdin when it ends (or dies); a signal ends us too.
	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(done) }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-done:
	case <-sig:
	case <-exited:
		return fmt.Errorf("local-kms exited: %v", waitErr)
	}
	return nil
}

func forward(c net.Conn, addr string) {
	defer c.Close()
	u, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer u.Close()
	go func() { _, _ = io.Copy(u, c); u.(*net.TCPConn).CloseWrite() }()
	_, _ = io.Copy(c, u)
}

// loopbackUp sets lo up (SIOCSIFFLAGS), as `ip link set lo up` does.
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
