package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// buildBinary builds the liveops binary once per test run, as CI and users build it.
func buildBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "liveops-bin")
		if err != nil {
			buildErr = err
			return
		}
		os.Chmod(dir, 0o755) // a test may run the binary as another user
		binPath = filepath.Join(dir, "liveops")
		cmd := exec.Command("go", "build", "-o", binPath, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = err
			t.Logf("go build: %s", out)
		}
	})
	if buildErr != nil {
		t.Fatalf("build: %v", buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// process is the real binary running as a server.
type process struct {
	cmd    *exec.Cmd
	addr   string
	stderr *bytes.Buffer // everything it printed to stderr, guarded by mu
	stdout *bytes.Buffer // and to stdout, guarded by mu
	mu     *sync.Mutex
	exited chan error
}

// startProcess runs the binary with args and waits for its "listening" line.
func startProcess(t *testing.T, args ...string) *process {
	t.Helper()
	return startProcessAs(t, nil, args...)
}

// startProcessAs is startProcess running the binary as the user cred names (nil: as this
// process).
func startProcessAs(t *testing.T, cred *syscall.Credential, args ...string) *process {
	t.Helper()
	cmd := exec.Command(buildBinary(t), append([]string{"-addr", "127.0.0.1:0", "-log-format", "json"}, args...)...)
	cmd.Env = []string{} // nothing from the test's environment
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, stderr: &bytes.Buffer{}, stdout: &bytes.Buffer{}, mu: &sync.Mutex{}, exited: make(chan error, 1)}
	cmd.Stdout = lockedWriter{p.mu, p.stdout}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addrc := make(chan string, 1)
	scanDone := make(chan struct{})
	go func() {
		defer close(scanDone)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.Write(append(sc.Bytes(), '\n'))
			p.mu.Unlock()
			var rec struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "listening" {
				addrc <- rec.Addr
			}
		}
	}()
	go func() { <-scanDone; p.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-scanDone
	})
	select {
	case p.addr = <-addrc:
	case err := <-p.exited:
		t.Fatalf("liveops exited before listening: %v\n%s", err, p.output())
	case <-time.After(30 * time.Second):
		t.Fatalf("liveops did not start within 30s\n%s", p.output())
	}
	return p
}

// lockedWriter writes to w under mu.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// stdoutText returns what the process printed to stdout so far.
func (p *process) stdoutText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String()
}

func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

func TestBinaryBootstrapsKeysAndStopsOnSIGTERM(t *testing.T) {
	db := filepath.Join(t.TempDir(), "liveops.db")

	// A start that cannot take its port fails before making any keys, so none are lost.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	failed := exec.Command(buildBinary(t), "-addr", taken.Addr().String(), "-db", db)
	if out, err := failed.CombinedOutput(); err == nil || strings.Contains(string(out), "lo_") {
		t.Fatalf("start on a taken port: %v\n%s\nwant a failure that prints no keys", err, out)
	}

	p := startProcess(t, "-db", db)
	// stdout reaches the test through a pipe of its own, so it may trail the log.
	waitFor(t, func() bool { return strings.Contains(p.stdoutText(), "LIVEOPS_ADMIN_KEY=") })
	out := p.stdoutText()
	if !strings.Contains(out, "shown only this once") {
		t.Fatalf("no bootstrap notice on stdout:\n%s", out)
	}
	user := regexp.MustCompile(`LIVEOPS_USER_KEY=(lo_user_\w+)`).FindStringSubmatch(out)
	admin := regexp.MustCompile(`LIVEOPS_ADMIN_KEY=(lo_admin_\w+)`).FindStringSubmatch(out)
	if user == nil || admin == nil {
		t.Fatalf("bootstrap keys not printed:\n%s", out)
	}
	// The log stays JSON and never holds a key.
	for _, line := range strings.Split(strings.TrimSpace(p.output()), "\n") {
		if !json.Valid([]byte(line)) || strings.Contains(line, "lo_") {
			t.Fatalf("log line %q is not JSON or holds a key", line)
		}
	}
	req, _ := http.NewRequest("GET", "http://"+p.addr+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+user[1])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /events with the bootstrap http_user key = %d", resp.StatusCode)
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v; want status 0\n%s", err, p.output())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("did not exit within 15s of SIGTERM")
	}

	// A second start finds keys and creates none; the keys were printed only once.
	p2 := startProcess(t, "-db", db)
	if strings.Contains(p2.output()+p2.stdoutText(), "lo_") {
		t.Fatalf("a second start printed keys:\n%s", p2.output())
	}
}

func TestKeysCommands(t *testing.T) {
	bin := buildBinary(t)
	db := filepath.Join(t.TempDir(), "liveops.db")
	runBin := func(args ...string) (string, string, error) {
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(bin, args...)
		cmd.Env = []string{}
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}

	stdout, stderr, err := runBin("keys", "create", "-role", "grpc_admin", "-name", "ci", "-db", db)
	if err != nil {
		t.Fatalf("keys create: %v %s", err, stderr)
	}
	key := strings.TrimSuffix(stdout, "\n")
	if strings.Count(stdout, "\n") != 1 || !checkKeyFormat(key) || !strings.HasPrefix(key, "lo_admin_") {
		t.Fatalf("keys create stdout = %q; want exactly the key on one line", stdout)
	}
	id := regexp.MustCompile(`key ([0-9a-f]{12})`).FindStringSubmatch(stderr)
	if id == nil {
		t.Fatalf("keys create stderr = %q; want the key id", stderr)
	}

	expiring, _, err := runBin("keys", "create", "-role", "http_user", "-name", "expiring", "-expires", "1h", "-db", db)
	if err != nil || !checkKeyFormat(strings.TrimSpace(expiring)) {
		t.Fatalf("keys create -expires: %q, %v", expiring, err)
	}

	stdout, _, err = runBin("keys", "list", "-db", db)
	for _, line := range strings.Split(stdout, "\n") {
		if f := strings.Fields(line); len(f) == 7 && f[2] == "expiring" {
			if exp, err := time.Parse(time.RFC3339, f[5]); err != nil || time.Until(exp) < 50*time.Minute || time.Until(exp) > time.Hour {
				t.Errorf("expiring key shows EXPIRES %q; want about an hour from now", f[5])
			}
		} else if len(f) == 7 && f[2] == "ci" && f[5] != "-" {
			t.Errorf("key without -expires shows EXPIRES %q", f[5])
		}
	}
	if err != nil || !strings.Contains(stdout, id[1]) || !strings.Contains(stdout, "grpc_admin") || !strings.Contains(stdout, "ci") {
		t.Fatalf("keys list = %q, %v", stdout, err)
	}
	if strings.Contains(stdout, key) {
		t.Fatal("keys list printed the key")
	}

	if _, stderr, err := runBin("keys", "revoke", id[1], "-db", db); err != nil {
		t.Fatalf("keys revoke: %v %s", err, stderr)
	}
	stdout, _, _ = runBin("keys", "list", "-db", db)
	if fields := strings.Fields(strings.Split(stdout, "\n")[1]); fields[len(fields)-1] == "-" {
		t.Fatalf("revoked key not shown as revoked: %q", stdout)
	}

	for _, args := range [][]string{
		{"keys", "create", "-role", "root", "-db", db},
		{"keys", "list", "-db", db + ".typo"},
		{"keys", "revoke", "ffffffffffff", "-db", db},
		{"keys", "revoke", "-db", db},
		{"keys", "frobnicate"},
	} {
		if stdout, _, err := runBin(args...); err == nil || stdout != "" {
			t.Errorf("%q: err = %v, stdout = %q; want a failure and nothing on stdout", args, err, stdout)
		}
	}
	var fileBytes []byte
	if fileBytes, err = os.ReadFile(db); err != nil {
		t.Fatal(err)
	}
	if wal, err := os.ReadFile(db + "-wal"); err == nil {
		fileBytes = append(fileBytes, wal...)
	}
	if bytes.Contains(fileBytes, []byte(key)) {
		t.Fatal("the key text is in the database file")
	}
}

func TestCommandLineForNewUsers(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	runBin := func(args ...string) (string, string, error) {
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(bin, args...)
		cmd.Env = []string{}
		cmd.Dir = dir
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}
	// Help that was asked for goes to stdout and is no failure.
	for _, args := range [][]string{{"-h"}, {"keys", "-h"}, {"keys", "create", "-h"}, {"import", "-h"}} {
		stdout, _, err := runBin(args...)
		if err != nil || !strings.Contains(stdout, "usage:") {
			t.Errorf("liveops %s: %v, stdout %q; want the usage on stdout and exit 0", strings.Join(args, " "), err, stdout)
		}
	}
	if stdout, _, err := runBin("version"); err != nil || !strings.HasPrefix(stdout, "liveops ") {
		t.Errorf("liveops version: %v, %q", err, stdout)
	}
	// Days are a unit for key lifetimes.
	db := filepath.Join(dir, "keys.db")
	_, stderr, err := runBin("keys", "create", "-role", "http_user", "-expires", "30d", "-db", db)
	if err != nil {
		t.Fatalf("keys create -expires 30d: %v %s", err, stderr)
	}
	// A database that did not exist is created, and the command says so.
	if !strings.Contains(stderr, "did not exist") {
		t.Errorf("keys create on a new database said only %q; want a note that it was created", stderr)
	}
	stdout, _, _ := runBin("keys", "list", "-db", db)
	if f := strings.Fields(strings.Split(stdout, "\n")[1]); len(f) != 7 || !strings.HasPrefix(f[5], time.Now().Add(30*24*time.Hour).UTC().Format("2006-01-02")) {
		t.Errorf("keys list after -expires 30d:\n%s", stdout)
	}
	// A mistake in the flags is reported once, not with the whole usage around it.
	_, stderr, err = runBin("-nosuchflag")
	if err == nil || strings.Count(stderr, "nosuchflag") != 1 || strings.Contains(stderr, "usage:") {
		t.Errorf("liveops -nosuchflag: %v, stderr %q; want one line naming the flag", err, stderr)
	}
	// Errors are prefixed once.
	_, stderr, err = runBin("keys", "revoke", "-db", db)
	if err == nil || strings.Contains(stderr, "liveops: liveops") || !strings.Contains(stderr, "liveops: keys revoke: want 1 argument") {
		t.Errorf("keys revoke without an id: %v, stderr %q", err, stderr)
	}
}

// tool is an external program a test runs (HAProxy, Prometheus): its combined output, and
// whether it has exited.
type tool struct {
	name   string
	mu     sync.Mutex
	out    bytes.Buffer
	exited chan struct{} // closed when it exits; err then says how
	err    error
}

// startTool starts cmd and stops it when the test ends, logging its output if the test
// failed.
func startTool(t *testing.T, name string, cmd *exec.Cmd) *tool {
	t.Helper()
	tl := &tool{name: name, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = lockedWriter{&tl.mu, &tl.out}, lockedWriter{&tl.mu, &tl.out}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { tl.err = cmd.Wait(); close(tl.exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-tl.exited
		if t.Failed() {
			t.Logf("%s output:\n%s", name, tl.output())
		}
	})
	return tl
}

func (tl *tool) output() string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return tl.out.String()
}

// failIfExited fails the test if the tool has exited.
func (tl *tool) failIfExited(t *testing.T) {
	t.Helper()
	select {
	case <-tl.exited:
		t.Fatalf("%s exited: %v\n%s", tl.name, tl.err, tl.output())
	default:
	}
}
