package httpcall_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/memworker/memworker/internal/httpcall"
)

func TestDoHoldsTheAnswerTo2xx(t *testing.T) {
	var got struct{ method, ctype, body string }
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.method, got.ctype, got.body = r.Method, r.Header.Get("Content-Type"), string(b)
		if r.URL.Path == "/fail" {
			http.Error(w, "no", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	ctx := context.Background()
	if err := httpcall.Do(ctx, http.MethodPost, srv.URL+"/ok", []byte(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	if got.method != http.MethodPost || got.ctype != "application/json" || got.body != `{"a":1}` {
		t.Errorf("the server got %+v", got)
	}
	if err := httpcall.Do(ctx, http.MethodGet, srv.URL+"/ok", nil); err != nil || got.ctype != "" {
		t.Errorf("a GET without a body: %v, content type %q", err, got.ctype)
	}
	if err := httpcall.Do(ctx, http.MethodPost, srv.URL+"/fail", nil); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("a 503 answered %v", err)
	}
	srv.Close()
	if err := httpcall.Do(ctx, http.MethodGet, srv.URL+"/ok", nil); err == nil {
		t.Error("a closed server answered")
	}
}
