"""GET /search?query=...: thin view over search.selectors.task_search_for."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from search.selectors import task_search_for
from search.serializers import (
    SearchFilterSerializer,
    SearchHitOutputSerializer,
    SearchPageOutputSerializer,
)
from taskhub.pagination import CappedPageNumberPagination


class SearchPagination(CappedPageNumberPagination):
    # Every row of a page costs ts_headline calls: a smaller cap than the task list's.
    max_page_size = 50


class SearchApi(APIView):
    @extend_schema(parameters=[SearchFilterSerializer], responses=SearchPageOutputSerializer)
    def get(self, request: Request) -> Response:
        filters = SearchFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        results = task_search_for(user=request.user, **filters.validated_data)
        paginator = SearchPagination()
        # The page asked for, so the count and the page come from one query.
        page_size = paginator.get_page_size(request)
        number = request.query_params.get(paginator.page_query_param, "1")
        if page_size and number.isdigit() and int(number) >= 1:
            results.expect_page(offset=(int(number) - 1) * page_size, limit=page_size)
        page = paginator.paginate_queryset(results, request, view=self)
        return paginator.get_paginated_response(SearchHitOutputSerializer(page, many=True).data)
