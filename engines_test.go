package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The store's tests run against both engines: SQLite in a temporary directory, and
// PostgreSQL, found through LIVEOPS_TEST_POSTGRES, each test in a schema of its own that is
// dropped when it ends. Without a PostgreSQL to reach, those tests skip, saying how to run
// them; under CI (CI=true) that is a failure.

// engines are the databases the store runs on.
var engines = []string{"sqlite", "postgres"}

// postgresTestURL is the PostgreSQL the tests use.
func postgresTestURL() string {
	if u := os.Getenv("LIVEOPS_TEST_POSTGRES"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// testDSN returns a -db value for a fresh, empty database on engine.
func testDSN(t testing.TB, engine string) string {
	t.Helper()
	if engine == "sqlite" {
		return filepath.Join(t.TempDir(), "test.db")
	}
	base := postgresTestURL()
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("PostgreSQL at LIVEOPS_TEST_POSTGRES (%s) is not reachable: %v", redactDSN(base), err)
		}
		t.Skipf("no PostgreSQL reachable (%v); start one, or set LIVEOPS_TEST_POSTGRES=postgres://..., to run the PostgreSQL tests", err)
	}
	var b [6]byte
	rand.Read(b[:])
	schema := "liveops_test_" + hex.EncodeToString(b[:])
	if _, err := admin.ExecContext(ctx, `CREATE SCHEMA `+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin.ExecContext(context.Background(), `DROP SCHEMA `+schema+` CASCADE`)
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// forEachEngine runs test once on each engine, with a fresh database's -db value.
func forEachEngine(t *testing.T, test func(t *testing.T, dsn string)) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) { test(t, testDSN(t, engine)) })
	}
}

// newTestStoreAt opens the store at dsn, closed when the test ends.
func newTestStoreAt(t testing.TB, dsn string) *store {
	t.Helper()
	st, err := openStore(context.Background(), dsn, time.Now)
	if err != nil {
		t.Fatalf("openStore: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestDatabasePasswordIsNeverLogged(t *testing.T) {
	if got := redactDSN("postgres://liveops:s3cret@db.example.com:5432/live?sslmode=require"); strings.Contains(got, "s3cret") {
		t.Fatalf("redactDSN kept the password: %s", got)
	}
	dsn := testDSN(t, "postgres")
	u, _ := url.Parse(dsn)
	u.User = url.UserPassword("postgres", "s3cret") // trust auth ignores it
	ts := startServerWith(t, u.String())
	if err := ts.stop(); err != nil {
		t.Fatal(err)
	}
	if logs := ts.logs.String(); strings.Contains(logs, "s3cret") || !strings.Contains(logs, `"msg":"listening"`) {
		t.Fatalf("the log holds the database password, or no listening line:\n%s", logs)
	}
}
