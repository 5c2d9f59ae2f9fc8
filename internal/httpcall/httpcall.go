// Package httpcall makes the small HTTP calls memworker's programs make to
// other processes (a model server's release and restore endpoints, a
// health probe) and holds them to one rule: the answer is 2xx, or the call
// failed.
package httpcall

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
)

// Do sends method to url with body (JSON when not nil), reads at most
// 1 MiB of the answer so the connection can be reused, and fails unless
// the status is 2xx.
func Do(ctx context.Context, method, url string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s answered %s", url, resp.Status)
	}
	return nil
}
