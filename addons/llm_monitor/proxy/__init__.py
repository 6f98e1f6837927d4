"""The proxy: the mitmproxy addon (token check, stream tap, one record per flow), the
provider modules that read usage, SSE and content-coding helpers, and how mitmdump is
launched (one process, or several behind HAProxy)."""
