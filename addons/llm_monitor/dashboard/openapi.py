"""The REST API's OpenAPI 3.1 description, written by hand (served at /api/openapi.json;
tests validate it and check that it lists every route of `dashboard.api`)."""

from __future__ import annotations

from typing import Any


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _date(name: str, about: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": about,
        "schema": {"type": "string", "format": "date"},
    }


_ROWS = {
    "description": "The rows, as the dashboard's view of the same name shows them.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Rows"}}},
}
_ERRORS = {
    "400": _error("A bad parameter: `parameter` names it, `error` says why."),
    "401": _error("No credentials, or an invalid (or revoked) token."),
}
_FROM = _date("from", "First day (UTC, inclusive); default 29 days before `to`.")
_TO = _date("to", "Last day (UTC, inclusive); default today.")


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "LLM Monitor API",
            "version": "1",
            "description": (
                "One organisation's usage and monitor tokens. Authenticate with "
                "`Authorization: Bearer dash_...` (`llm-monitor dashboard-token create`) or "
                "a dashboard session (then POST and DELETE need `X-CSRFToken`, the "
                "`ds_csrftoken` cookie's value). Costs are USD; null when unknown."
            ),
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "ds_actor"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["ok", "error", "status"],
                    "properties": {
                        "ok": {"const": False},
                        "error": {"type": "string"},
                        "status": {"type": "integer"},
                        "parameter": {"type": "string"},
                    },
                },
                "Rows": {
                    "type": "object",
                    "required": ["ok", "org", "parameters", "rows"],
                    "properties": {
                        "ok": {"const": True},
                        "org": {"type": "string"},
                        "parameters": {"type": "object"},
                        "rows": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "Token": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "prefix": {"type": "string"},
                        "label": {"type": ["string", "null"]},
                        "created_by": {"type": ["string", "null"]},
                        "created_at": {"type": "string"},
                        "last_used_at": {"type": ["string", "null"]},
                        "revoked_at": {"type": ["string", "null"]},
                        "requests_30d": {"type": "integer"},
                        "cost_usd_30d": {"type": ["number", "null"]},
                    },
                },
            },
        },
        "security": [{"bearer": []}, {"session": []}],
        "paths": {
            "/api/stats/summary": {
                "get": {
                    "summary": "This day, week or month against the one before",
                    "operationId": "statsSummary",
                    "parameters": [
                        {
                            "name": "period",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["day", "week", "month"]},
                        }
                    ],
                    "responses": {"200": _ROWS, **_ERRORS},
                }
            },
            "/api/stats/timeline": {
                "get": {
                    "summary": "Cost, tokens and requests per hour or day",
                    "operationId": "statsTimeline",
                    "parameters": [
                        _FROM,
                        _TO,
                        {
                            "name": "granularity",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["hour", "day"]},
                        },
                    ],
                    "responses": {"200": _ROWS, **_ERRORS},
                }
            },
            "/api/stats/by-model": {
                "get": {
                    "summary": "Cost and tokens per model",
                    "operationId": "statsByModel",
                    "parameters": [_FROM, _TO],
                    "responses": {"200": _ROWS, **_ERRORS},
                }
            },
            "/api/tokens": {
                "get": {
                    "summary": "The organisation's monitor tokens (never the tokens themselves)",
                    "operationId": "listTokens",
                    "responses": {
                        "200": {
                            "description": "Tokens, live first, with 30 days of use.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "ok": {"const": True},
                                            "org": {"type": "string"},
                                            "tokens": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/Token"},
                                            },
                                        },
                                    }
                                }
                            },
                        },
                        "401": _ERRORS["401"],
                    },
                },
                "post": {
                    "summary": "Create a monitor token (shown only in this answer)",
                    "operationId": "createToken",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["name"],
                                    "properties": {"name": {"type": "string", "maxLength": 100}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": {
                            "description": "The new token, in the clear this once.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "ok": {"const": True},
                                            "id": {"type": "integer"},
                                            "name": {"type": "string"},
                                            "token": {"type": "string"},
                                        },
                                    }
                                }
                            },
                        },
                        **_ERRORS,
                        "403": _error("The caller's role is viewer: admins and owners only."),
                    },
                },
                "delete": {
                    "summary": "Revoke a monitor token (the proxy refuses it within a second)",
                    "operationId": "revokeToken",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "integer"},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "Revoked (or it already was).",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_ERRORS,
                        "403": _error("The caller's role is viewer: admins and owners only."),
                        "404": _error("No token with this id in the organisation."),
                    },
                },
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
    }
