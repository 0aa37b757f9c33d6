"""Shortest job first. Without hints: shortest prompt first. With ``use_hint=True``: shortest
predicted output first, from the client's ``output_len_hint`` (the idea of Qiu et al., "Efficient
Interactive LLM Serving with Proxy-based Request Length Prediction", 2024 / Fu et al., "Efficient
LLM Scheduling by Learning to Rank", NeurIPS'24). The victim is the request with the most work left."""

from policies.base import SchedulingPolicy, output_len_hint, prompt_len, tokens_served


class SJF(SchedulingPolicy):
    name = "sjf"

    def __init__(self, use_hint: bool = False) -> None:
        self.use_hint = use_hint

    def job_len(self, request) -> float:
        if self.use_hint:
            hint = output_len_hint(request)
            if hint is not None:
                return hint - tokens_served(request)
            return request.max_tokens - tokens_served(request)
        return prompt_len(request)

    def waiting_key(self, request):
        return self.job_len(request)

    def preemption_key(self, request):
        return (self.job_len(request), request.arrival_time)
