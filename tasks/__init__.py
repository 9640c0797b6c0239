"""Celery tasks: the budget-checking base task and the LLM tasks.

from tasks import complete
complete.delay({"model": "gpt-4o-mini", "messages": [...], "max_tokens": 200})
"""

from tasks.llm import TASK_FOR_URL, complete, embed

__all__ = ["TASK_FOR_URL", "complete", "embed"]
