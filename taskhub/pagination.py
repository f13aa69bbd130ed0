from __future__ import annotations

from rest_framework.pagination import PageNumberPagination


class CappedPageNumberPagination(PageNumberPagination):
    """Page-number pagination where the client may ask for up to 100 rows a page."""

    page_size_query_param = "page_size"
    max_page_size = 100
